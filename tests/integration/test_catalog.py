"""The image catalog on SQLite and on a real PostgreSQL server (started on 127.0.0.1 by the
test setup): migrations, the pending -> uploaded -> verified states, history of a changed
source, studies and series grouped by DICOM UIDs, and concurrent writers."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pdata_sync.catalog import (
    PENDING,
    UPLOADED,
    VERIFIED,
    VERSION_TABLE,
    Catalog,
    SourceInfo,
    metadata,
    series,
    studies,
)
from pdata_sync.dicom_meta import UNKNOWN, DicomHeader
from pdata_sync.errors import ConfigError

GUID = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, tmp_path):
    if request.param == "sqlite":
        cat = Catalog.open(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}")
    else:
        pg = request.getfixturevalue("postgres")
        name = f"catalog_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(12)
        url = pg.create_database(name, f"owner_{name}", password)
        cat = Catalog.open(url, password)
    yield cat
    cat.close()


def info(path="P_1/0000_7.dcm", sha="a" * 64, size=100, mtime=1, study="1.2.3", ser="1.2.3.4"):
    header = DicomHeader(
        study_instance_uid=study,
        series_instance_uid=ser,
        sop_instance_uid=f"{ser}.{size}",
        modality="IO",
        acquisition_date="20240102",
    )
    return SourceInfo(path, 7, GUID, size, mtime, sha, header)


def test_migrations_build_exactly_the_declared_schema(catalog):
    with catalog.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata
        )
        version = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    assert diff == []
    assert version == "0001"
    catalog.migrate()  # idempotent


def test_states_move_forward_with_times_and_flow_run(catalog):
    key = f"images/{GUID}/c1_7_x.dcm"
    catalog.mark_pending("c1", key, info(), "run-1")
    row = catalog.lookup("c1", [key])[key]
    assert row.state == PENDING and row.etag is None
    catalog.mark_uploaded("c1", key, "a" * 64, "etag1", "run-1")
    assert catalog.lookup("c1", [key])[key].state == UPLOADED
    catalog.mark_verified("c1", key, "a" * 64, "etag1", "run-1")
    row = catalog.lookup("c1", [key])[key]
    assert (row.state, row.etag, row.size, row.mtime_ns) == (VERIFIED, "etag1", 100, 1)
    with catalog.engine.connect() as conn:
        r = conn.execute(sa.text("SELECT * FROM images")).mappings().one()
    assert r["pending_at"] <= r["uploaded_at"] <= r["verified_at"]
    assert r["flow_run_id"] == "run-1" and r["modality"] == "IO"
    assert catalog.lookup("c2", [key]) == {}  # clinics are separate
    assert catalog.state_counts("c1") == {VERIFIED: 1}


def test_verify_refuses_other_content_than_the_pending_one(catalog):
    key = f"images/{GUID}/c1_7_x.dcm"
    catalog.mark_pending("c1", key, info(sha="a" * 64), None)
    with pytest.raises(RuntimeError, match="no pending row"):
        catalog.mark_verified("c1", key, "b" * 64, "e", None)
    assert catalog.lookup("c1", [key])[key].state == PENDING


def test_changed_source_keeps_its_history(catalog):
    key = f"images/{GUID}/c1_7_x.dcm"
    catalog.record_verified("c1", key, info(sha="a" * 64, size=100, mtime=1), "e1", "run-1")
    catalog.mark_pending("c1", key, info(sha="b" * 64, size=120, mtime=2), "run-2")
    catalog.mark_uploaded("c1", key, "b" * 64, "e2", "run-2")
    catalog.mark_verified("c1", key, "b" * 64, "e2", "run-2")
    history = catalog.history("c1", key)
    assert [(h["sha256"], h["source_size"], h["etag"], h["state"]) for h in history] == [
        ("a" * 64, 100, "e1", VERIFIED)
    ]
    assert (
        history[0]["verified_at"] is not None and history[0]["replaced_by_flow_run_id"] == "run-2"
    )
    row = catalog.lookup("c1", [key])[key]
    assert (row.sha256, row.size, row.state) == ("b" * 64, 120, VERIFIED)
    # re-recording the same content adds no history
    catalog.mark_pending("c1", key, info(sha="b" * 64, size=120, mtime=3), "run-3")
    assert len(catalog.history("c1", key)) == 1


def test_studies_and_series_grouped_by_uid_under_concurrent_writers(catalog):
    """16 threads record 64 images of 2 studies x 2 series at once: one row per UID."""

    def record(n: int) -> None:
        study = f"1.2.{n % 2}"
        key = f"images/{GUID}/c1_{n}_x.dcm"
        item = info(path=f"P_1/0000_{n}.dcm", sha=f"{n:064x}", study=study, ser=f"{study}.{n % 4}")
        catalog.mark_pending("c1", key, item, "run")
        catalog.mark_uploaded("c1", key, item.sha256, f"e{n}", "run")
        catalog.mark_verified("c1", key, item.sha256, f"e{n}", "run")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(record, range(64)))
    assert catalog.state_counts("c1") == {VERIFIED: 64}
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(studies)).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(series)).scalar() == 4
        per_series = conn.execute(
            sa.text("SELECT series_id, count(*) FROM images GROUP BY series_id")
        ).all()
    assert sorted(n for _, n in per_series) == [16, 16, 16, 16]


def test_unknown_uids_leave_the_series_empty(catalog):
    key = f"images/{GUID}/c1_7_x.dcm"
    catalog.mark_pending("c1", key, info(study=UNKNOWN, ser=UNKNOWN), None)
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT series_id FROM images")).scalar() is None


def test_unreachable_catalog_is_a_config_error_naming_it(postgres, tmp_path):
    with pytest.raises(ConfigError, match=r"catalog postgresql\+psycopg://nobody:\*\*\*@") as err:
        Catalog.open(postgres.url("nothere", "nobody"), "wrong-Pa55")
    assert "cannot connect" in str(err.value) and "wrong-Pa55" not in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="catalog: cannot create the folder"):
        Catalog.open(f"sqlite:///{blocker / 'sub' / 'catalog.sqlite'}")
