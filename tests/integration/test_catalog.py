"""The image catalog on SQLite and on a real PostgreSQL server (started on 127.0.0.1 by the
test setup): migrations, the pending -> accepted -> verified states, history of a changed
source, studies and series grouped by DICOM UIDs, and concurrent writers."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from pdata_sync.base.errors import ClinicBusyError, ConfigError
from pdata_sync.catalog import (
    ACCEPT,
    ACCEPTED,
    CONFIRM,
    DRIFTED,
    HEAD_REVISION,
    INVENTORY_COLUMNS,
    LEGACY_DESTINATION,
    MATCH,
    MIGRATIONS,
    PENDING,
    RETIRED,
    VERIFIED,
    VERSION_TABLE,
    Catalog,
    IllegalTransition,
    PendingItem,
    Settled,
    SourceInfo,
    metadata,
    now,
    series,
    studies,
)
from pdata_sync.catalog.lock import STALE_AFTER
from pdata_sync.catalog.schema import clinic_locks
from pdata_sync.source.dicom_meta import UNKNOWN, DicomHeader

GUID = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"


def empty_db(request, kind: str, folder) -> tuple[str, str | None]:
    """(url, password) of a new empty database: an SQLite file in ``folder``, or a database
    of its own on the test PostgreSQL server."""
    if kind == "sqlite":
        return f"sqlite:///{folder / 'catalog.sqlite'}", None
    pg = request.getfixturevalue("postgres")
    name = f"catalog_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    return pg.create_database(name, f"owner_{name}", password), password


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_db(request, tmp_path):
    """(url, password) of an empty catalog database."""
    return empty_db(request, request.param, tmp_path / "state")


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


@pytest.fixture
def second_db(request, catalog_db, tmp_path):
    """(url, password) of a second empty database of catalog_db's kind."""
    return empty_db(request, request.node.callspec.params["catalog_db"], tmp_path / "other")


def migrated(db) -> Catalog:
    """A catalog built by running every migration script, as an upgraded clinic's is."""
    cat = Catalog.open(*db, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with cat.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return cat


def reflected(engine: sa.Engine) -> dict:
    """Every table as the database reports it: columns (type, nullability, default), keys,
    indexes, unique and CHECK constraints."""
    insp = sa.inspect(engine)

    def norm(sql) -> str:
        return " ".join(str(sql).replace("(", " ( ").replace(")", " ) ").split()).lower()

    schema = {}
    for table in sorted(insp.get_table_names()):
        schema[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in insp.get_columns(table)
            ],
            "pk": sorted(insp.get_pk_constraint(table)["constrained_columns"]),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
            "checks": sorted(norm(c["sqltext"]) for c in insp.get_check_constraints(table)),
        }
    return schema


def test_a_new_catalog_is_created_as_the_migrations_build_it(catalog_db, second_db):
    """A clinic's first run creates its catalog in one step from the declared schema; an
    upgraded clinic's catalog is built by the migration scripts. Both must be the same
    database, and the migrations must build exactly the declared schema."""
    old = migrated(catalog_db)
    new = Catalog.open(*second_db)
    try:
        with old.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata
            )
        assert diff == []
        built, created = reflected(old.engine), reflected(new.engine)
        assert set(built) == {*metadata.tables, VERSION_TABLE}
        assert any(t["checks"] for t in built.values())  # the comparison sees CHECKs
        assert created == built
        # both at the newest script, which the constant that skips Alembic names
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        assert old.schema_revision() == new.schema_revision() == HEAD_REVISION == head
        with new.engine.begin() as conn:  # Alembic agrees the new one is at head
            assert MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_heads() == (head,)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")  # nothing to do
        assert reflected(new.engine) == built
        new.migrate()  # idempotent
        assert new.schema_revision() == HEAD_REVISION
    finally:
        old.close()
        new.close()


def test_a_new_catalog_enforces_what_the_migrations_enforce(catalog):
    """The CHECK on an image's state holds in a catalog created in one step."""
    upload(catalog.images("c1", DEST))
    with pytest.raises(sa.exc.IntegrityError, match="(?i)check"), catalog.engine.begin() as conn:
        conn.execute(sa.text("UPDATE images SET state = 'lost'"))


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
        # the row does not say which bucket it describes: it is kept, never trusted
        assert cat.images("c1", DEST).lookup([KEY]) == {}
        legacy = cat.images("c1", LEGACY_DESTINATION)
        row = legacy.lookup([KEY])[KEY]
        assert (row.state, row.etag, row.size, row.sha256) == (VERIFIED, "etag1", 100, "a" * 64)
        assert row.confirmed_at is not None  # its verified_at
        legacy.contradict([KEY])
        assert legacy.lookup([KEY])[KEY].state == DRIFTED  # the state 0002 added is allowed
        with pytest.raises(sa.exc.IntegrityError), cat.engine.begin() as conn:
            conn.execute(sa.text("UPDATE images SET state = 'lost'"))
    finally:
        cat.close()


def test_the_state_uploaded_of_a_0007_catalog_is_accepted_after_the_upgrade(catalog_db):
    """Revision 0008 renames the state 'uploaded' to 'accepted' wherever the catalog keeps
    a state: the row, the state a pending row restores, replaced contents and events."""
    old = Catalog.open(*catalog_db, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    accepted_key, pending_key = KEY, KEY.replace("_7_", "_8_")
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
        rows = [  # as a 0007 release wrote them
            (accepted_key, 7, "uploaded", None),
            (pending_key, 8, "pending", "uploaded"),
        ]
        for key, image_id, state, prior in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO images (clinic_id, destination, key, image_id, patient_guid,"
                    " rel_path, state, prior_state, updated_at) VALUES ('c1', :dest, :key, :id,"
                    " :guid, 'P_1/0000_7.dcm', :state, :prior, :t)"
                ),
                {"dest": DEST, "key": key, "id": image_id, "guid": GUID, "state": state,
                 "prior": prior, "t": now()},
            )  # fmt: skip
        conn.execute(
            sa.text(
                "INSERT INTO image_events (clinic_id, destination, key, transition, from_state,"
                " to_state, at) VALUES ('c1', :dest, :key, 'accept', 'pending', 'uploaded', :t)"
            ),
            {"dest": DEST, "key": accepted_key, "t": now()},
        )
    old.close()

    cat = Catalog.open(*catalog_db)
    try:
        assert cat.schema_revision() == HEAD_REVISION
        imgs = cat.images("c1", DEST)
        assert imgs.lookup([accepted_key])[accepted_key].state == ACCEPTED
        imgs.release([pending_key])  # back to the state it left, by its new name
        assert imgs.lookup([pending_key])[pending_key].state == ACCEPTED
        with cat.engine.connect() as conn:
            events = conn.execute(sa.text("SELECT from_state, to_state FROM image_events"))
            assert ("pending", "accepted") in set(events)
        with pytest.raises(sa.exc.IntegrityError), cat.engine.begin() as conn:
            conn.execute(sa.text("UPDATE images SET state = 'uploaded'"))
    finally:
        cat.close()


def test_a_0009_catalogs_retire_events_get_the_place_their_row_still_names(catalog_db):
    """Revision 0010 gives events their own detail. A row still retired names where its copy
    went: its last retire event gets that; an earlier retire of the same key, and a retire
    whose row came back since (its place was lost with 0009), stay without."""
    old = Catalog.open(*catalog_db, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    back_key = KEY.replace("_7_", "_8_")
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0009")
        for key, image_id, state, to, why in (
            (KEY, 7, "retired", "retired/c1/T2/x", "the file is gone from PDATA"),
            (back_key, 8, "verified", None, None),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO images (clinic_id, destination, key, image_id, patient_guid,"
                    " rel_path, state, retired_to, retired_reason, updated_at) VALUES ('c1',"
                    " :dest, :key, :id, :guid, 'P_1/0000_7.dcm', :state, :to, :why, :t)"
                ),
                {"dest": DEST, "key": key, "id": image_id, "guid": GUID, "state": state,
                 "to": to, "why": why, "t": now()},
            )  # fmt: skip
        for key, transition in ((KEY, "retire"), (KEY, "begin_upload"), (KEY, "retire"),
                                (back_key, "retire"), (back_key, "begin_upload")):  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO image_events (clinic_id, destination, key, transition, at)"
                    " VALUES ('c1', :dest, :key, :transition, :t)"
                ),
                {"dest": DEST, "key": key, "transition": transition, "t": now()},
            )
    old.close()

    cat = Catalog.open(*catalog_db)
    try:
        assert cat.schema_revision() == HEAD_REVISION
        with cat.engine.connect() as conn:
            details = conn.execute(
                sa.text("SELECT key, transition, detail FROM image_events ORDER BY id")
            ).all()
        assert [tuple(d) for d in details] == [
            (KEY, "retire", None),
            (KEY, "begin_upload", None),
            (KEY, "retire", "retired/c1/T2/x (the file is gone from PDATA)"),
            (back_key, "retire", None),
            (back_key, "begin_upload", None),
        ]
    finally:
        cat.close()


KEY = f"images/{GUID}/c1_7_x.dcm"
DEST = "http://127.0.0.1:8333/dental-images"


def pending(key=KEY, path="P_1/0000_7.dcm"):
    return [PendingItem(key, path, 7, GUID)]


def settled(transition, sha="a" * 64, etag="etag1", key=KEY, **kwargs):
    return [Settled(key, info(sha=sha, **kwargs), transition, etag, now())]


def upload(imgs, transition=CONFIRM, run="run-1", key=KEY, path="P_1/0000_7.dcm", **kwargs):
    """begin_upload, then settle: what the uploader does for one key."""
    imgs.begin_upload(pending(key, path), run)
    imgs.settle(settled(transition, key=key, **kwargs), run)


@pytest.fixture
def imgs(catalog):
    return catalog.images("c1", DEST)


def test_a_listing_confirms_or_contradicts_only_settled_rows(catalog, imgs):
    other = f"images/{GUID}/c1_8_x.dcm"
    upload(imgs)
    imgs.begin_upload(pending(other, "P_1/0000_8.dcm"), "run-1")
    first = imgs.lookup([KEY])[KEY].confirmed_at

    imgs.contradict([KEY], "verify-1")  # verify: missing from S3
    row = imgs.lookup([KEY])[KEY]
    # drifted, and not confirmed: a contradiction is no confirmation
    assert row.state == DRIFTED and row.confirmed_at == first
    with pytest.raises(IllegalTransition, match="contradict .* from state pending"):
        imgs.contradict([other])  # not verified yet: not drift
    assert imgs.lookup([other])[other].state == PENDING

    imgs.reconfirm([KEY], "verify-2")  # the object is back with the verified size and ETag
    rows = imgs.lookup([KEY, other])
    assert rows[KEY].state == VERIFIED and rows[KEY].confirmed_at > first
    assert imgs.state_counts() == {VERIFIED: 1, PENDING: 1}
    assert [(e["transition"], e["from_state"], e["to_state"], e["flow_run_id"])
            for e in imgs.events(KEY)] == [
        ("begin_upload", None, "pending", "run-1"),
        ("confirm", "pending", "verified", "run-1"),
        ("contradict", "verified", "drifted", "verify-1"),
        ("reconfirm", "drifted", "verified", "verify-2"),
    ]  # fmt: skip


def test_a_listing_that_confirms_a_row_dated_ahead_dates_it_now(catalog, imgs):
    """A clock that ran ahead dated a confirmation in 2099: no run trusts it, so the next
    listing checks the object; when that listing confirms it, the row's dates come back to
    now. Kept in the future, every later run would list the patient again, forever."""
    from pdata_sync.catalog import in_the_future
    from pdata_sync.catalog.schema import images as images_table

    upload(imgs)
    with catalog.engine.begin() as conn:
        ahead = now() + timedelta(days=365 * 70)
        conn.execute(sa.update(images_table).values(verified_at=ahead, checked_at=ahead))
    assert in_the_future(imgs.lookup([KEY])[KEY].confirmed_at)

    imgs.reconfirm([KEY], "run-2")  # the listing shows the verified size and ETag
    row = imgs.lookup([KEY])[KEY]
    assert row.state == VERIFIED and not in_the_future(row.confirmed_at)


def test_verified_rows_of_patients_are_what_a_listing_can_contradict(catalog, imgs):
    other_guid = "9e1f6c2b-0000-4000-8000-000000000001"
    pending_key, other_key = f"images/{GUID}/c1_8_x.dcm", f"images/{other_guid}/c1_9_x.dcm"
    upload(imgs)
    imgs.begin_upload(pending(pending_key, "P_1/0000_8.dcm"), "run-1")
    imgs.begin_upload([PendingItem(other_key, "P_2/0000_9.dcm", 9, other_guid)], "run-1")
    assert set(imgs.verified_of_patients([GUID])) == {KEY}  # the pending row is not
    assert imgs.verified_of_patients([other_guid]) == {}
    assert catalog.images("c1", "s3://other").verified_of_patients([GUID]) == {}


def test_a_retired_row_stays_for_the_record_and_can_come_back(catalog, imgs):
    upload(imgs)
    imgs.retire(KEY, f"retired/c1/20261201T000000Z/{KEY}", "the file is gone from PDATA", "r-2")
    assert imgs.lookup([KEY])[KEY].state == RETIRED
    with catalog.engine.connect() as conn:
        r = conn.execute(sa.text("SELECT retired_to, retired_reason FROM images")).one()
    assert r.retired_to.startswith("retired/c1/") and r.retired_reason.startswith("the file")
    with pytest.raises(IllegalTransition, match="retire .* from state retired"):
        imgs.retire(KEY, "retired/x", "again", "r-3")
    upload(imgs, run="run-4")  # the file came back: uploaded again under its key
    assert imgs.lookup([KEY])[KEY].state == VERIFIED
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT retired_to FROM images")).scalar() is None
    assert [e["transition"] for e in imgs.events(KEY)] == [
        "begin_upload", "confirm", "retire", "begin_upload", "confirm"
    ]  # fmt: skip
    # the audit still says where the retired copy went and why, after the row moved on
    (retired,) = [e for e in imgs.audit(key=KEY) if e["transition"] == "retire"]
    assert retired["detail"] == (f"retired/c1/20261201T000000Z/{KEY} (the file is gone from PDATA)")
    assert [e["detail"] for e in imgs.audit(key=KEY) if e["transition"] != "retire"] == [None] * 4


def test_states_move_forward_with_times_and_flow_run(catalog, imgs):
    imgs.begin_upload(pending(), "run-1")
    row = imgs.lookup([KEY])[KEY]
    assert row.state == PENDING and row.etag is None and row.sha256 is None
    imgs.settle(settled(ACCEPT), "run-1")
    assert imgs.lookup([KEY])[KEY].state == ACCEPTED
    imgs.begin_upload(pending(), "run-2")
    imgs.settle(settled(MATCH), "run-2")  # the same bytes found in S3 by the next run
    row = imgs.lookup([KEY])[KEY]
    assert (row.state, row.etag, row.size, row.mtime_ns) == (VERIFIED, "etag1", 100, 1)
    with catalog.engine.connect() as conn:
        r = conn.execute(sa.text("SELECT * FROM images")).mappings().one()
    assert r["pending_at"] >= r["uploaded_at"] and r["verified_at"] >= r["uploaded_at"]
    # run-1 uploaded these bytes; run-2 only found them there
    assert r["flow_run_id"] == "run-1" and r["modality"] == "IO" and r["sha256"] == "a" * 64
    assert r["destination"] == DEST
    assert catalog.images("c2", DEST).lookup([KEY]) == {}  # clinics are separate
    assert catalog.images("c1", "s3://other").lookup([KEY]) == {}  # destinations too
    assert imgs.state_counts() == {VERIFIED: 1}


def test_verified_totals_count_the_confirmed_objects_of_this_clinic_and_bucket(catalog, imgs):
    assert imgs.verified_totals() == (0, 0)  # a new clinic: nothing archived
    upload(imgs, size=100)
    upload(imgs, key=KEY + "2", path="P_1/0000_8.dcm", size=250)
    imgs.begin_upload(pending(KEY + "3", "P_1/0000_9.dcm"), "run-1")  # pending: not yet
    upload(catalog.images("c2", DEST), key=KEY + "4", size=999)  # another clinic
    upload(catalog.images("c1", "s3://other"), size=999)  # another bucket
    assert imgs.verified_totals() == (2, 350)
    imgs.contradict([KEY])  # S3 was seen not to hold it: no longer counted
    assert imgs.verified_totals() == (1, 250)


def test_rows_of_one_destination_never_vouch_for_another(catalog, imgs):
    upload(imgs)
    elsewhere = catalog.images("c1", "s3://dental-images-2")
    assert elsewhere.lookup([KEY]) == {} and elsewhere.rows() == []
    upload(elsewhere, run="run-2")
    assert imgs.lookup([KEY])[KEY].state == elsewhere.lookup([KEY])[KEY].state == VERIFIED
    elsewhere.contradict([KEY])
    assert imgs.lookup([KEY])[KEY].state == VERIFIED  # the other bucket's row is untouched


def test_changed_source_keeps_its_history(catalog, imgs):
    upload(imgs, sha="a" * 64, etag="e1", size=100)
    imgs.begin_upload(pending(), "run-2")
    row = imgs.lookup([KEY])[KEY]
    assert row.state == PENDING and row.sha256 == "a" * 64  # last accepted content kept
    imgs.settle(settled(ACCEPT, sha="b" * 64, etag="e2", size=120, mtime=2), "run-2")
    imgs.begin_upload(pending(), "run-3")
    imgs.settle(settled(MATCH, sha="b" * 64, etag="e2", size=120, mtime=2), "run-3")
    history = imgs.history(KEY)
    assert [(h["sha256"], h["source_size"], h["etag"], h["state"]) for h in history] == [
        ("a" * 64, 100, "e1", VERIFIED)
    ]
    assert history[0]["verified_at"] is not None
    assert history[0]["replaced_by_flow_run_id"] == "run-2"
    row = imgs.lookup([KEY])[KEY]
    assert (row.sha256, row.size, row.state) == ("b" * 64, 120, VERIFIED)
    # settling the same content again adds no history
    upload(imgs, run="run-4", sha="b" * 64, etag="e2", size=120, mtime=3)
    assert len(imgs.history(KEY)) == 1


def test_transitions_refuse_rows_in_other_states(imgs):
    with pytest.raises(IllegalTransition, match="confirm of .* from state no row"):
        imgs.settle(settled(CONFIRM), "run-1")  # never begun
    upload(imgs)
    with pytest.raises(IllegalTransition, match="release of .* from state verified"):
        imgs.release([KEY])
    with pytest.raises(IllegalTransition, match="match of .* from state verified"):
        imgs.settle(settled(MATCH), "run-2")
    assert imgs.lookup([KEY])[KEY].state == VERIFIED  # nothing written


def test_studies_and_series_grouped_by_uid_under_concurrent_writers(catalog, imgs):
    """16 threads record 64 images of 2 studies x 4 series at once: one row per UID."""

    def record(n: int) -> None:
        study = f"1.2.{n % 2}"
        key = f"images/{GUID}/c1_{n}_x.dcm"
        imgs.begin_upload(pending(key, f"P_1/0000_{n}.dcm"), "run")
        item = info(path=f"P_1/0000_{n}.dcm", sha=f"{n:064x}", study=study, ser=f"{study}.{n % 4}")
        imgs.settle([Settled(key, item, CONFIRM, f"e{n}", now())], "run")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(record, range(64)))
    assert imgs.state_counts() == {VERIFIED: 64}
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(studies)).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(series)).scalar() == 4
        per_series = conn.execute(
            sa.text("SELECT series_id, count(*) FROM images GROUP BY series_id")
        ).all()
    assert sorted(n for _, n in per_series) == [16, 16, 16, 16]


def test_a_series_id_is_shared_between_threads_only_once_its_row_is_committed(catalog):
    """Found under load on PostgreSQL (the test above, 4 xdist workers on 2 cores): a thread
    took the id of a series another thread had inserted but not committed yet, and its
    image row failed the foreign key. The id may be handed out only after the commit."""
    header = info(study="9.8", ser="9.8.7").header
    before_commit: dict[str, int | None] = {}
    begin = catalog.begin

    @contextlib.contextmanager
    def peek_before_commit():
        with begin() as conn:
            yield conn
            before_commit["id"] = catalog.series.id_of("c1", header)  # what another thread sees

    catalog.begin = peek_before_commit
    try:
        catalog.series.register("c1", [header], now())
    finally:
        del catalog.begin
    assert before_commit == {"id": None}
    assert catalog.series.id_of("c1", header) is not None


def test_a_second_worker_on_the_same_catalog_reuses_studies_and_series(catalog, imgs):
    """Another process (its own series cache) sees the rows the first one created."""
    upload(imgs)
    other = Catalog(catalog.engine).images("c1", DEST)
    upload(other, key=f"images/{GUID}/c1_8_x.dcm", path="P_1/0000_8.dcm")
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(series)).scalar() == 1


def test_unknown_uids_leave_the_series_empty(catalog, imgs):
    upload(imgs, run=None, study=UNKNOWN, ser=UNKNOWN)
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


def test_released_pending_rows_go_or_get_back_the_state_they_left(imgs):
    other = f"images/{GUID}/c1_8_x.dcm"
    upload(imgs)
    imgs.begin_upload(pending() + pending(other, "P_1/0000_8.dcm"), "run-2")
    imgs.release([KEY, other], "run-2")  # both turned out to be bad input
    rows = imgs.lookup([KEY, other])
    assert set(rows) == {KEY} and rows[KEY].state == VERIFIED and rows[KEY].sha256 == "a" * 64
    assert [e["transition"] for e in imgs.events(other)] == ["begin_upload", "release"]


def test_a_drifted_row_released_stays_drifted(imgs):
    """verify found the object missing; the re-upload is refused once (file briefly empty):
    the row must stay drifted, never become verified from its old verified_at."""
    upload(imgs)
    imgs.contradict([KEY])
    imgs.begin_upload(pending(), "run-2")
    imgs.release([KEY], "run-2")
    assert imgs.lookup([KEY])[KEY].state == DRIFTED
    # an interrupted run left it pending; the next one begins again: still drifted after
    imgs.begin_upload(pending(), "run-3")
    imgs.begin_upload(pending(), "run-4")
    imgs.release([KEY], "run-4")
    assert imgs.lookup([KEY])[KEY].state == DRIFTED


def test_the_clinic_lock_refuses_a_second_run_naming_the_holder(catalog):
    with catalog.lock("c1", "sync", "run-1"):
        with pytest.raises(ClinicBusyError) as err:
            catalog.lock("c1", "verify", "run-2").acquire()
        message = str(err.value)
        assert message.startswith("clinic c1 is busy: sync by host ")
        assert f"pid {os.getpid()}" in message and "(flow run run-1)" in message
        assert "since 20" in message
        with catalog.lock("c2", "sync"):  # other clinics are free
            pass
    with catalog.lock("c1", "verify", "run-3"):  # released: free again
        pass


def test_a_stale_lock_is_taken_over(catalog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = now()
    with catalog.begin() as conn:  # a run of this host that is gone
        conn.execute(
            sa.insert(clinic_locks).values(
                clinic_id="c1", token="x" * 32, purpose="sync", host=socket.gethostname(),
                pid=dead.pid, flow_run_id="gone", acquired_at=t, heartbeat_at=t,
            )
        )  # fmt: skip
    with catalog.lock("c1", "sync", "run-2") as lock:
        assert lock.taken_over is not None and lock.taken_over.flow_run_id == "gone"
    with catalog.begin() as conn:  # another host, silent for longer than STALE_AFTER
        old = t - STALE_AFTER - timedelta(seconds=1)
        conn.execute(
            sa.insert(clinic_locks).values(
                clinic_id="c1", token="y" * 32, purpose="verify", host="elsewhere",
                pid=1, flow_run_id="far", acquired_at=old, heartbeat_at=old,
            )
        )  # fmt: skip
    with catalog.lock("c1", "sync") as lock:
        assert lock.taken_over.host == "elsewhere"
    with catalog.begin() as conn:  # another host, beating: busy
        conn.execute(
            sa.insert(clinic_locks).values(
                clinic_id="c1", token="z" * 32, purpose="sync", host="elsewhere",
                pid=1, flow_run_id="alive", acquired_at=t, heartbeat_at=now(),
            )
        )  # fmt: skip
    with pytest.raises(ClinicBusyError, match="host elsewhere pid 1"):
        catalog.lock("c1", "sync").acquire()


def test_a_key_held_by_another_image_is_refused_and_said_so(catalog, imgs):
    """The catalog never records one key for two images: not for another image of the
    clinic, not for another clinic's image in the same destination. The refused key gets no
    row and no event; the holder's row is untouched. Another destination is another key."""
    upload(imgs)  # KEY is image 7 of clinic c1, verified
    before = imgs.lookup([KEY])[KEY]
    refused = imgs.begin_upload([PendingItem(KEY, "P_1/0000_71.dcm", 71, GUID)], "run-2")
    assert refused == {
        KEY: f"key conflict: the catalog records {KEY} as image 7 of this clinic; image 71 "
        "is not uploaded over it"
    }
    other_clinic = catalog.images("c1-x", DEST)
    fresh = f"images/{GUID}/other.dcm"
    refused = other_clinic.begin_upload(
        [
            PendingItem(KEY, "P_9/0000_7.dcm", 7, GUID),
            PendingItem(fresh, "P_9/0000_8.dcm", 8, GUID),
        ],
        "run-3",
    )
    assert refused == {
        KEY: f"key conflict: the catalog records {KEY} as image 7 of clinic c1; image 7 is "
        "not uploaded over it"
    }
    assert set(other_clinic.lookup([KEY, fresh])) == {fresh}  # only the free key is pending
    assert imgs.lookup([KEY])[KEY] == before
    assert [e["transition"] for e in imgs.events(KEY)] == ["begin_upload", "confirm"]
    # the same image of the same clinic goes on as before
    assert imgs.begin_upload(pending(), "run-4") == {}
    # another bucket holds nothing yet
    assert catalog.images("c1-x", DEST + "-2").begin_upload(pending(), "run-5") == {}


def test_the_lock_date_is_kept_through_a_match_and_the_inventory_carries_it(
    catalog, imgs, tmp_path
):
    import csv
    import dataclasses
    from datetime import date

    from pdata_sync.pipeline.inventory import write_inventory

    locked = dataclasses.replace(info(), retain_until=date(2034, 1, 2))
    imgs.begin_upload(pending(), "run-1")
    imgs.settle([Settled(KEY, locked, CONFIRM, "etag1", now())], "run-1")
    # a later run finds the same bytes in S3 and writes nothing: the version keeps its date
    imgs.begin_upload(pending(), "run-2")
    imgs.settle([Settled(KEY, info(), MATCH, "etag1", now())], "run-2")

    assert write_inventory(imgs, tmp_path / "inventory.csv") == 1
    with open(tmp_path / "inventory.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert tuple(row) == INVENTORY_COLUMNS
    assert {k: row[k] for k in ("key", "patient_guid", "image_id", "study_instance_uid",
                                "series_instance_uid", "modality", "size", "state",
                                "retain_until")} == {
        "key": KEY, "patient_guid": GUID, "image_id": "7", "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4", "modality": "IO", "size": "100",
        "state": "verified", "retain_until": "2034-01-02",
    }  # fmt: skip
    # a new upload without a lock (s3.object_lock removed) writes a version without one
    imgs.begin_upload(pending(), "run-3")
    imgs.settle([Settled(KEY, info(sha="b" * 64), CONFIRM, "etag2", now())], "run-3")
    assert imgs.inventory()[0]["retain_until"] is None
    with pytest.raises(ConfigError, match=r"must end in \.parquet or \.csv"):
        write_inventory(imgs, tmp_path / "inventory.xlsx")
