"""Failures outside the data path: each ends the run with one clear line naming the thing
at fault (exit 2), and leaves no partial work behind."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import BUCKET, run_cli


@pytest.fixture
def case(make_site):
    """``run(edit, env)`` edits the clinic's config, syncs, and answers the CLI's output with
    the keys then in the bucket (emptied before: nothing to write is never refused)."""
    site = make_site(patients=12)
    config, s3 = site.config, site.client

    def run(edit=None, env=None):
        if edit:
            data = yaml.safe_load(config.read_text())
            edit(data)
            config.write_text(yaml.safe_dump(data))
        out = run_cli(["sync", "--config", str(config), "--json"], {**site.env, **(env or {})})
        written = {
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        }
        return out, written

    return run, site.resolver, site.clinic


def one_line(out) -> str:
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout == ""
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("pdata-sync:")]
    assert len(lines) == 1, out.stderr[-2000:]
    return lines[0]


def test_database_unreachable(case, tmp_path):
    run, resolver, _ = case
    missing = tmp_path / "no-such-folder" / "sidexis.db"
    out, written = run(lambda d: d["database"].update(url=f"sqlite:///{missing}"))
    line = one_line(out)
    assert "database" in line and "cannot connect" in line and str(missing) in line
    assert written == set() and resolver.state.requests == 0


def test_column_missing(case):
    run, resolver, _ = case
    out, written = run(lambda d: d["database"].update(card_id_column="ChartNo"))
    line = one_line(out)
    assert "table Patient or one of its columns" in line and "ChartNo" in line
    assert written == set() and resolver.state.requests == 0


def test_table_missing(case):
    run, resolver, _ = case
    out, written = run(lambda d: d["database"].update(media_table="Media"))
    assert "table Media " in one_line(out)
    assert written == set()


def test_pdata_root_missing(case, tmp_path):
    run, resolver, _ = case
    out, written = run(lambda d: d.update(pdata_root=str(tmp_path / "gone")))
    line = one_line(out)
    assert "PDATA root" in line and str(tmp_path / "gone") in line and "does not exist" in line
    assert written == set()


def test_access_denied(case, seaweed):
    """Credentials that may list but not write: stopped at the first refusal."""
    run, resolver, clinic = case
    out, written = run(env=seaweed.reader_env())
    line = one_line(out)
    assert "access denied writing to bucket 'dental-images'" in line
    assert written == set()


def test_wrong_secret_key(case, seaweed):
    run, resolver, _ = case
    out, written = run(env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    line = one_line(out)
    assert "bucket 'dental-images'" in line and "denied" in line
    assert "not-the-secret" not in out.stderr
    assert written == set() and resolver.state.requests == 0


def _copy_sidexis_to_postgres(clinic, postgres, password: str) -> str:
    """The generated Sidexis tables, copied into a real PostgreSQL database (schema dbo)."""
    import sqlite3

    import sqlalchemy as sa

    url = postgres.create_database("sidexis", "sidexis_reader", password)
    postgres.execute(
        "CREATE SCHEMA dbo AUTHORIZATION sidexis_reader",
        'CREATE TABLE dbo."Patient" ("PatientId" int NOT NULL, "CardId" varchar(50), '
        '"IsDeleted" int NOT NULL DEFAULT 0, "LastName" text, "FirstName" text, '
        '"BirthDate" text)',
        'CREATE TABLE dbo."MediaBase" ("MediaBaseId" int PRIMARY KEY, '
        '"PatientId" int NOT NULL, "Name" text, "IsDeleted" int NOT NULL DEFAULT 0)',
        "GRANT USAGE ON SCHEMA dbo TO sidexis_reader",
        "GRANT SELECT ON ALL TABLES IN SCHEMA dbo TO sidexis_reader",
        database="sidexis",
    )
    src = sqlite3.connect(clinic.database_path)
    engine = sa.create_engine(postgres.admin_url("sidexis"))
    with engine.begin() as conn:
        for table in ("Patient", "MediaBase"):
            cur = src.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            target = sa.table(table, *(sa.column(c) for c in cols), schema="dbo")
            rows = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
            conn.execute(sa.insert(target), rows)
    engine.dispose()
    src.close()
    return url


def test_database_on_a_real_server_wrong_password(case, postgres):
    """A real database server (PostgreSQL here; SQL Server in production goes through the
    same code): the right password syncs, a wrong one stops the run naming the database and
    user, without printing the password."""
    run, resolver, clinic = case
    url = _copy_sidexis_to_postgres(clinic, postgres, "right-Pa55")

    def use_pg(d):
        d["database"].update(url=url, schema="dbo")

    out, written = run(use_pg, env={"PDATA_SYNC_DB_PASSWORD": "wrong-Pa55"})
    line = one_line(out)
    assert "database" in line and "cannot connect" in line
    assert "sidexis_reader" in line and f":{postgres.port}/sidexis" in line
    assert "password authentication failed" in line
    assert "wrong-Pa55" not in out.stderr and "right-Pa55" not in out.stderr
    assert written == set() and resolver.state.requests == 0

    out, written = run(env={"PDATA_SYNC_DB_PASSWORD": "right-Pa55"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["uploaded"] + result["unchanged"] == len(clinic.expected)
    assert result["failed"] == [] and result["patients_resolved"] > 0
