"""Failures outside the data path: each ends the run with one clear line naming the thing
at fault (exit 2), and leaves no partial work behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config
from tests.conftest import BUCKET, load_mapping, make_clinic

CLI = str(Path(sys.executable).parent / "pdata-sync")


@pytest.fixture
def case(tmp_path, seaweed, prefect_server):
    clinic = make_clinic(tmp_path / "clinic", patients=12)
    s3 = seaweed.client()
    before = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    with ResolverServer(load_mapping(clinic)) as resolver:
        config = write_config(
            tmp_path / "c.yaml",
            clinic,
            resolver_url=resolver.url,
            endpoint=seaweed.endpoint,
            state_dir=tmp_path / "state",
        )

        def run(edit=None, env=None):
            if edit:
                data = yaml.safe_load(config.read_text())
                edit(data)
                config.write_text(yaml.safe_dump(data))
            out = subprocess.run(
                [CLI, "sync", "--config", str(config), "--json"],
                env={**os.environ, **prefect_server.env(), **seaweed.env(), **(env or {})},
                capture_output=True,
                text=True,
                timeout=240,
            )
            after = {
                o["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])
            }
            return out, after - before

        yield run, resolver, clinic


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
