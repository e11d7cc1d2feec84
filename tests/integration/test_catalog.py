"""The image catalog on SQLite and on a real PostgreSQL server (started on 127.0.0.1 by the
test setup): migrations, the pending -> uploaded -> verified states, history of a changed
source, studies and series grouped by DICOM UIDs, and concurrent writers."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from pdata_sync.catalog import (
    DRIFTED,
    HEAD_REVISION,
    MIGRATIONS,
    PENDING,
    UPLOADED,
    VERIFIED,
    VERSION_TABLE,
    Catalog,
    PendingItem,
    Settled,
    SourceInfo,
    metadata,
    now,
    series,
    studies,
)
from pdata_sync.dicom_meta import UNKNOWN, DicomHeader
from pdata_sync.errors import ConfigError

GUID = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_db(request, tmp_path):
    """(url, password) of an empty catalog database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}", None
    pg = request.getfixturevalue("postgres")
    name = f"catalog_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    return pg.create_database(name, f"owner_{name}", password), password


@pytest.fixture
def catalog(catalog_db):
    cat = Catalog.open(*catalog_db)
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
    # the constant that lets an up-to-date catalog skip Alembic names the newest script
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert version == HEAD_REVISION == ScriptDirectory.from_config(cfg).get_current_head()
    catalog.migrate()  # idempotent
    assert catalog.schema_revision() == HEAD_REVISION


def test_an_older_catalog_is_upgraded_keeping_its_rows(catalog_db):
    """A catalog at 0001 with a verified row: opening it migrates (SQLite copies the table
    to change its CHECK constraint) and the row keeps its content."""
    old = Catalog.open(*catalog_db, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        t = now()
        conn.execute(  # as a 0001 release wrote it (today's code knows newer columns)
            sa.text(
                "INSERT INTO images (clinic_id, key, image_id, patient_guid, rel_path,"
                " source_size, source_mtime_ns, sha256, etag, state, verified_at, updated_at)"
                " VALUES ('c1', :key, 7, :guid, 'P_1/0000_7.dcm', 100, 1, :sha, 'etag1',"
                " 'verified', :t, :t)"
            ),
            {"key": KEY, "guid": GUID, "sha": "a" * 64, "t": t},
        )
    assert old.schema_revision() == "0001"
    old.close()

    cat = Catalog.open(*catalog_db)
    try:
        assert cat.schema_revision() == HEAD_REVISION
        row = cat.lookup("c1", [KEY])[KEY]
        assert (row.state, row.etag, row.size, row.sha256) == (VERIFIED, "etag1", 100, "a" * 64)
        assert row.confirmed_at is not None  # its verified_at
        cat.record_check("c1", [], [KEY])
        assert cat.lookup("c1", [KEY])[KEY].state == DRIFTED  # the new state is allowed
        with pytest.raises(sa.exc.IntegrityError), cat.engine.begin() as conn:
            conn.execute(sa.text("UPDATE images SET state = 'lost'"))
    finally:
        cat.close()


def test_a_listing_confirms_or_marks_drift_and_only_on_settled_rows(catalog):
    other = f"images/{GUID}/c1_8_x.dcm"
    catalog.settle("c1", settled(VERIFIED), "run-1")
    catalog.mark_pending("c1", pending(other, "P_1/0000_8.dcm"), "run-1")
    first = catalog.lookup("c1", [KEY])[KEY].confirmed_at

    catalog.record_check("c1", [], [KEY, other])  # verify: both missing from S3
    rows = catalog.lookup("c1", [KEY, other])
    assert rows[KEY].state == DRIFTED and rows[KEY].confirmed_at > first
    assert rows[other].state == PENDING  # not verified yet: not drift, left as it is

    catalog.record_check("c1", [KEY, other], [])  # the object is back as verified
    rows = catalog.lookup("c1", [KEY, other])
    assert rows[KEY].state == VERIFIED and rows[other].state == PENDING
    assert catalog.state_counts("c1") == {VERIFIED: 1, PENDING: 1}


KEY = f"images/{GUID}/c1_7_x.dcm"


def pending(key=KEY, path="P_1/0000_7.dcm"):
    return [PendingItem(key, path, 7, GUID)]


def settled(state, sha="a" * 64, etag="etag1", key=KEY, **kwargs):
    t = now()
    return [Settled(key, info(sha=sha, **kwargs), state, etag, t, t if state == VERIFIED else None)]


def test_states_move_forward_with_times_and_flow_run(catalog):
    catalog.mark_pending("c1", pending(), "run-1")
    row = catalog.lookup("c1", [KEY])[KEY]
    assert row.state == PENDING and row.etag is None and row.sha256 is None
    catalog.settle("c1", settled(UPLOADED), "run-1")
    assert catalog.lookup("c1", [KEY])[KEY].state == UPLOADED
    catalog.settle("c1", settled(VERIFIED), "run-1")
    row = catalog.lookup("c1", [KEY])[KEY]
    assert (row.state, row.etag, row.size, row.mtime_ns) == (VERIFIED, "etag1", 100, 1)
    with catalog.engine.connect() as conn:
        r = conn.execute(sa.text("SELECT * FROM images")).mappings().one()
    assert r["pending_at"] <= r["uploaded_at"] <= r["verified_at"]
    assert r["flow_run_id"] == "run-1" and r["modality"] == "IO" and r["sha256"] == "a" * 64
    assert catalog.lookup("c2", [KEY]) == {}  # clinics are separate
    assert catalog.state_counts("c1") == {VERIFIED: 1}


def test_changed_source_keeps_its_history(catalog):
    catalog.settle("c1", settled(VERIFIED, sha="a" * 64, etag="e1", size=100), "run-1")
    catalog.mark_pending("c1", pending(), "run-2")
    row = catalog.lookup("c1", [KEY])[KEY]
    assert row.state == PENDING and row.sha256 == "a" * 64  # last accepted content kept
    catalog.settle("c1", settled(UPLOADED, sha="b" * 64, etag="e2", size=120, mtime=2), "run-2")
    catalog.settle("c1", settled(VERIFIED, sha="b" * 64, etag="e2", size=120, mtime=2), "run-2")
    history = catalog.history("c1", KEY)
    assert [(h["sha256"], h["source_size"], h["etag"], h["state"]) for h in history] == [
        ("a" * 64, 100, "e1", VERIFIED)
    ]
    assert history[0]["verified_at"] is not None
    assert history[0]["replaced_by_flow_run_id"] == "run-2"
    row = catalog.lookup("c1", [KEY])[KEY]
    assert (row.sha256, row.size, row.state) == ("b" * 64, 120, VERIFIED)
    # settling the same content again adds no history
    catalog.mark_pending("c1", pending(), "run-3")
    catalog.settle("c1", settled(VERIFIED, sha="b" * 64, etag="e2", size=120, mtime=3), "run-3")
    assert len(catalog.history("c1", KEY)) == 1


def test_studies_and_series_grouped_by_uid_under_concurrent_writers(catalog):
    """16 threads record 64 images of 2 studies x 4 series at once: one row per UID."""

    def record(n: int) -> None:
        study = f"1.2.{n % 2}"
        key = f"images/{GUID}/c1_{n}_x.dcm"
        catalog.mark_pending("c1", pending(key, f"P_1/0000_{n}.dcm"), "run")
        t = now()
        item = info(path=f"P_1/0000_{n}.dcm", sha=f"{n:064x}", study=study, ser=f"{study}.{n % 4}")
        catalog.settle("c1", [Settled(key, item, VERIFIED, f"e{n}", t, t)], "run")

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


def test_a_second_worker_on_the_same_catalog_reuses_studies_and_series(catalog):
    """Another process (its own series cache) sees the rows the first one created."""
    catalog.settle("c1", settled(VERIFIED), "run")
    other = Catalog(catalog.engine)
    other.settle("c1", settled(VERIFIED, key=f"images/{GUID}/c1_8_x.dcm"), "run")
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(series)).scalar() == 1


def test_unknown_uids_leave_the_series_empty(catalog):
    catalog.settle("c1", settled(VERIFIED, study=UNKNOWN, ser=UNKNOWN), None)
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


def test_released_pending_rows_go_or_get_their_last_state_back(catalog):
    other = f"images/{GUID}/c1_8_x.dcm"
    catalog.settle("c1", settled(VERIFIED), "run-1")
    catalog.mark_pending("c1", pending() + pending(other, "P_1/0000_8.dcm"), "run-2")
    catalog.release_pending("c1", [KEY, other])  # both turned out to be bad input
    rows = catalog.lookup("c1", [KEY, other])
    assert set(rows) == {KEY} and rows[KEY].state == VERIFIED and rows[KEY].sha256 == "a" * 64
