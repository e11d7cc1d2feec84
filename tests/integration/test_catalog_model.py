"""Model-based test of the catalog's invariants (docs/adr/0006): random sequences of what
happens to a clinic's archive, against real SeaweedFS, the real resolver server and a real
SQLite catalog, with the invariants checked after every step.

Odd seeds run with incremental runs (``incremental: true``), even seeds without; seeds 0
and 1 of every four also store to a real Orthanc (docs/orthanc.md), whose copy must hold
what the catalog says it holds.

Steps: add / change / delete / touch a source file; edit one in place keeping its size and
mtime; delete or overwrite an object behind the product's back; a sync while a file is
briefly empty; the media table emptied for a while (a database being restored); a catalog
written by a clock that ran ahead; another clinic claiming one of the keys; switch the
bucket; a sync killed at a random moment; a sync; a full sync; a verify; two syncs at once;
a sync while Orthanc does not answer. The other bucket a switch goes to keeps versions, as
a bucket with Object Lock does: delete markers and non-current versions are in it.
Syncs and verifies are the product's own sequences (pdata_sync.pipeline.runs: run_sync and
run_verify, the functions the flows run as Prefect tasks), run in-process without Prefect,
so hundreds of them fit in seconds.

``make test`` runs :data:`SEQUENCES` sequences of :data:`STEPS` steps from fixed seeds; a
longer run (docs/adr/0006 records its figures):

    PDATA_MODEL_SEQUENCES=200 .venv/bin/pytest tests/integration/test_catalog_model.py -n0
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import sqlalchemy as sa
import yaml

from pdata_sync.base.config import load_config
from pdata_sync.base.errors import ClinicBusyError
from pdata_sync.catalog import (
    ACCEPTED,
    CONFIRM,
    DRIFTED,
    PENDING,
    RETIRED,
    VERIFIED,
    Catalog,
    PendingItem,
    image_events,
)
from pdata_sync.catalog import image_history as history_table
from pdata_sync.catalog.orthanc import HELD
from pdata_sync.catalog.orthanc import REJECTED as REJECTED_IN_ORTHANC
from pdata_sync.catalog.schema import orthanc_instances as orthanc_table
from pdata_sync.demo.ports import free_port
from pdata_sync.identity.keys import FALLBACK_NAME, parse_key
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.runs import Runner, SyncRun, run_sync, run_verify
from tests.conftest import BUCKET, open_site, record_model_run
from tests.kit.s3 import destroy_versions, empty_bucket

SEQUENCES = int(os.environ.get("PDATA_MODEL_SEQUENCES", "4"))
FIRST_SEED = int(os.environ.get("PDATA_MODEL_FIRST_SEED", "0"))  # to replay one: its seed
STEPS = int(os.environ.get("PDATA_MODEL_STEPS", "12"))
OTHER_BUCKET = "dental-images-model"
MODES: Counter[str] = Counter()  # clean syncs of this process's sequences, by mode
OPS = (
    "add",
    "change",
    "delete",
    "touch",
    "edit_in_place",
    "vanish_media",
    "restore_media",
    "future_clock",
    "foreign_row",
    "full_sync",
    "s3_delete",
    "s3_overwrite",
    "empty_during_sync",
    "switch_bucket",
    "kill_sync",
    "sync",
    "sync",
    "verify",
    "two_syncs",
    "orthanc_down",
)
KILLED_SYNC = """
import sys
from pdata_sync.base.config import load_config
from pdata_sync.catalog import Catalog
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.runs import Runner, run_sync
config = load_config(sys.argv[1])
run_sync(Runner(), RunContext(config, "killed-run", catalog=Catalog.open(sys.argv[2])))
"""


def images_of(catalog: Catalog, config):
    """The clinic's rows in the config's bucket, as the product's run context finds them."""
    return RunContext(config, catalog=catalog).images()


def sync(catalog: Catalog, config, run_id: str, full: bool = False) -> SyncRun:
    """One sync through the product's sequence (``full``: ``sync --full``)."""
    runner = Runner()
    try:
        return run_sync(runner, RunContext(config, run_id, catalog=catalog), full_run=full)
    finally:
        runner.close()


def uploaded_by(catalog: Catalog, config, run_id: str) -> set[str]:
    """Keys this run uploaded and S3 confirmed: the catalog's own record of the run."""
    return {
        e["key"]
        for e in images_of(catalog, config).events()
        if e["flow_run_id"] == run_id and e["transition"] == CONFIRM.name
    }


@dataclass
class World:
    """What the test knows independently of the product."""

    root: Path
    config_path: Path
    catalog_url: str
    rng: random.Random
    bucket: str = BUCKET
    removed: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # rel -> (bytes, mtime)
    # per bucket: keys changed behind the product's back that it has not seen yet
    tampered: dict[str, set[str]] = field(default_factory=dict)
    events: int = 0
    history: int = 0
    steps: int = 0
    # files edited in place (size and mtime kept) that no sync has re-read yet
    edited: set[str] = field(default_factory=set)
    media_saved: Path | None = None  # the database before its media table was emptied
    named: dict[int, str] = field(default_factory=dict)  # image id -> its name then, in S3
    # keys whose rows a clock ahead dated, as the catalog holds them when a sync starts (a
    # sync the model does not watch, a killed one, may have confirmed some again since)
    future_keys: set[str] = field(default_factory=set)
    modes: dict[str, int] = field(default_factory=dict)  # clean syncs by mode (full, incremental)
    orthanc: Any = None  # the Orthanc server of this sequence, if it stores to one

    @property
    def config(self):
        cfg = load_config(self.config_path)
        return cfg.model_copy(update={"s3": cfg.s3.model_copy(update={"bucket": self.bucket})})

    def config_file(self) -> Path:
        """The config as a file, with the bucket in use (for a sync in another process)."""
        data = yaml.safe_load(self.config_path.read_text())
        data["s3"]["bucket"] = self.bucket
        path = self.config_path.with_name("clinic-now.yaml")
        path.write_text(yaml.safe_dump(data))
        return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def objects(client, bucket: str) -> dict[str, dict]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="images/"):
        for o in page.get("Contents", []):
            out[o["Key"]] = {"size": o["Size"], "etag": o["ETag"].strip('"')}
    return out


def retired_objects(client, bucket: str) -> set[str]:
    return {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="retired/"
        )
        for o in page.get("Contents", [])
    }


def body(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def dicom_files(world: World) -> list[Path]:
    return sorted(p for p in world.root.glob("P_*/*.dcm") if p.stat().st_size > 0)


def check_invariants(world: World, catalog: Catalog, client) -> None:
    """After every step, in both buckets: a verified row is what S3 holds, byte for byte
    (except objects changed behind the product's back it has not seen yet); the record of
    events and replaced contents only grows."""
    for bucket in (BUCKET, OTHER_BUCKET):
        cfg = world.config.model_copy(
            update={"s3": world.config.s3.model_copy(update={"bucket": bucket})}
        )
        stored = objects(client, bucket)
        unseen = world.tampered.get(bucket, set())
        for row in images_of(catalog, cfg).rows():
            if row.state != VERIFIED or row.key in unseen:
                continue
            assert row.key in stored, f"{bucket}: {row.key} verified, not in S3"
            obj = stored[row.key]
            assert (obj["size"], obj["etag"]) == (row.size, row.etag), f"{bucket}: {row.key}"
            assert sha(body(client, bucket, row.key)) == row.sha256, f"{bucket}: {row.key} bytes"
    with catalog.engine.connect() as conn:
        events = conn.execute(sa.select(sa.func.count()).select_from(image_events)).scalar()
        history = conn.execute(sa.select(sa.func.count()).select_from(history_table)).scalar()
        # a key is one image's: never recorded for two (clinic, image id) in a destination
        holders = conn.execute(
            sa.text(
                "SELECT destination, key, count(DISTINCT clinic_id || ':' || image_id) "
                "FROM images GROUP BY destination, key HAVING count(DISTINCT clinic_id || "
                "':' || image_id) > 1"
            )
        ).all()
        kept = conn.execute(
            sa.select(history_table.c.kept_at, history_table.c.sha256).where(
                history_table.c.kept_at.is_not(None)
            )
        ).all()
    assert not holders, f"keys recorded for two images: {holders}"
    check_orthanc_holds(world, catalog)
    assert events >= world.events and history >= world.history, "history was lost"
    world.events, world.history = events, history
    # nothing is overwritten without a copy: every replaced content is kept where its
    # history row says, with those bytes
    for kept_at, digest in kept:
        found = [b for b in (BUCKET, OTHER_BUCKET) if kept_at in retired_objects(client, b)]
        assert found, f"replaced content not kept at {kept_at}"
        assert sha(body(client, found[0], kept_at)) == digest, kept_at


def check_orthanc_holds(world: World, catalog: Catalog) -> None:
    """What the catalog records as held by Orthanc is there, with the recorded content: the
    file Orthanc gives back has the row's SHA-256."""
    if world.orthanc is None:
        return
    server = world.config.orthanc.url
    query = sa.select(orthanc_table.c.key, orthanc_table.c.sha256, orthanc_table.c.instance_id)
    query = query.where(orthanc_table.c.server == server, orthanc_table.c.status.in_(HELD))
    with catalog.engine.connect() as conn:
        held = conn.execute(query).all()
    with httpx.Client(auth=(world.orthanc.user, world.orthanc.password)) as http:
        for key, digest, instance in held:
            answer = http.get(f"{server}/instances/{instance}/file")
            assert answer.status_code == 200, f"Orthanc: {key} recorded as held, not there"
            assert sha(answer.content) == digest, f"Orthanc: {key} holds other content"


def check_clean_sync(
    world: World,
    catalog: Catalog,
    client,
    run: SyncRun,
    full: bool = False,
    orthanc_down: bool = False,
) -> None:
    """After a sync without faults in S3: every planned object is in S3 with the file's
    bytes and its row is verified; nothing failed; no row is left pending or unconfirmed;
    with Orthanc answering, each of them was given to Orthanc with that content. A sync the
    database check stopped uploaded and retired nothing."""
    summary = run.summary
    assert run.busy is None and run.fatal is None, (run.busy, run.fatal)
    if run.stopped:
        assert world.media_saved is not None, run.stopped  # only an outage stops it
        assert (summary.batches, summary.uploaded, summary.retired) == (0, 0, [])
        return
    # nothing failed: no upload, no planning conflict, no retirement (nor its safety limit)
    assert summary.failed == [], summary.failed
    assert run.plan is not None
    cfg = world.config
    world.modes[summary.mode] = world.modes.get(summary.mode, 0) + 1
    rows = {r.key: r for r in images_of(catalog, cfg).rows()}
    # a confirmation dated by a clock ahead vouches for nothing: those keys were listed, in
    # an incremental run those of the patients it read (the others were not looked at)
    looked_at = world.future_keys
    if summary.mode == "incremental":
        read = {i.patient_guid for i in run.plan.images}
        looked_at = {k for k in looked_at if k.split("/")[1] in read}
    unseen = world.tampered.get(world.bucket, set()) - looked_at
    # a file edited in place is seen once the rolling check re-reads it; every one when it
    # re-reads every file (rehash_days 1) or in a full run (its ctime moved)
    reread = set(summary.content_check.changed)
    every = full or cfg.transfer.rehash_days == 1
    unread = set() if every else world.edited - reread
    rejected_paths = {p.path for p in summary.rejected}
    rejected = {i.key for i in run.plan.images if i.rel_path in rejected_paths}
    for item in run.plan.images:
        if item.key in rejected or item.key in unseen or item.rel_path in unread:
            continue
        data = (world.root / item.rel_path).read_bytes()
        assert body(client, world.bucket, item.key) == data, item.key
        assert rows[item.key].state == VERIFIED and rows[item.key].sha256 == sha(data)
    assert not [r.key for r in rows.values() if r.state in (PENDING, ACCEPTED)]
    # the archive converges to the source: nothing in images/ that is not planned (what a
    # deleted file left was retired), and every retired row's object is out of images/
    stored = set(objects(client, world.bucket))
    planned = {i.key for i in run.plan.images}
    if summary.mode == "incremental":
        # only the changed patients' folders were read: the others' objects stay as they
        # were (a file deleted without a database change waits for the next full run), but
        # nothing is in images/ that the catalog does not hold as archived
        archived = {r.key for r in rows.values() if r.state != RETIRED}
        assert stored <= planned | archived, stored - planned - archived
    else:
        assert stored <= planned, stored - planned
    assert not [r.key for r in rows.values() if r.state == RETIRED and r.key in stored]
    # one object per image and patient: a database outage never doubles the archive
    per_image: dict[tuple[str, int], list[str]] = {}
    for key in stored:
        fields = parse_key(key, cfg.s3.key_template)
        per_image.setdefault((key.split("/")[1], fields["image_id"]), []).append(key)
    assert not {k: v for k, v in per_image.items() if len(v) > 1}, per_image
    if world.media_saved is not None:  # media rows missing: no image is re-keyed
        for key in stored:
            fields = parse_key(key, cfg.s3.key_template)
            was = world.named.get(fields["image_id"])
            assert was is None or fields["name"] == was, f"{key} was named {was}"
    if world.orthanc is not None and not orthanc_down:
        # Orthanc answered: every image verified in S3 was given to it, with that content
        o = summary.orthanc
        assert o is not None and o.unavailable is None and o.failed == [], o
        sent = catalog.orthanc(cfg.clinic_id, cfg.orthanc.url).lookup(list(rows))
        for item in run.plan.images:
            if item.key in rejected or item.key in unseen or item.rel_path in unread:
                continue
            row = sent.get(item.key)
            assert row is not None and row.sha256 == rows[item.key].sha256, item.key
            assert row.status in (*HELD, REJECTED_IN_ORTHANC), (item.key, row.status)
    world.edited = set() if every else world.edited - reread
    # what this sync uploaded is no longer unseen
    uploaded = uploaded_by(catalog, cfg, summary.flow_run_id)
    world.tampered[world.bucket] = unseen - uploaded
    if cfg.transfer.recheck_days == 0 or full:  # every planned patient's prefix was listed
        listed = {item.patient_guid for item in run.plan.images}
        world.tampered[world.bucket] = {
            k for k in world.tampered[world.bucket] if k.split("/")[1] not in listed
        }


def check_verify(world: World, catalog: Catalog, client) -> None:
    """verify's findings are exactly the difference between the catalog and S3, and what
    it found missing or changed is drifted afterwards."""
    cfg = world.config
    images = images_of(catalog, cfg)
    before = images.rows()
    stored = objects(client, world.bucket)
    guids = {r.patient_guid for r in before}
    belongs = RunContext(cfg).belongs
    missing, changed = set(), set()
    for row in before:
        if row.state not in (VERIFIED, DRIFTED):
            continue
        obj = stored.get(row.key)
        if obj is None:
            missing.add(row.key)
        elif (obj["size"], obj["etag"]) != (row.size, row.etag):
            changed.add(row.key)
    known = {r.key for r in before}
    unknown = {
        k for k in stored if k.split("/")[1] in guids and k not in known and belongs(k)
    }  # fmt: skip
    drift, busy = run_verify(Runner(), RunContext(cfg, f"verify-{world.steps}", catalog=catalog))
    assert busy is None and drift is not None, busy
    assert set(drift.missing) == missing
    assert {c["key"] for c in drift.changed} == changed
    assert set(drift.unknown) == unknown
    after = images.lookup(missing | changed)
    assert all(r.state == DRIFTED for r in after.values())
    world.tampered[world.bucket] = set()  # the product has seen everything now


def future_dated(catalog: Catalog) -> set[str]:
    """Keys whose confirmation a clock ahead dated (future_clock writes 2099), read from the
    catalog itself."""
    from pdata_sync.catalog.schema import images as table

    far = datetime(2090, 1, 1, tzinfo=UTC)
    query = sa.select(table.c.key).where(
        sa.or_(table.c.verified_at >= far, table.c.checked_at >= far)
    )
    with catalog.engine.connect() as conn:
        return {r[0] for r in conn.execute(query)}


def planned_file(world: World) -> Path | None:
    files = dicom_files(world)
    return world.rng.choice(files) if files else None


def step(world: World, op: str, catalog: Catalog, client) -> None:  # noqa: C901 - one op each
    rng = world.rng
    cfg = world.config
    if op == "add" and world.removed:
        rel = rng.choice(sorted(world.removed))
        data, mtime = world.removed.pop(rel)
        (world.root / rel).write_bytes(data)
        os.utime(world.root / rel, ns=(mtime, mtime))
    elif op == "delete" and (path := planned_file(world)):
        rel = str(path.relative_to(world.root))
        world.removed[rel] = (path.read_bytes(), path.stat().st_mtime_ns)
        path.unlink()
    elif op == "change" and (path := planned_file(world)):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - the clinic's junk files are not changed
            return
        ds.ImageComments = f"revised {rng.random()}"
        ds.save_as(path)
    elif op == "edit_in_place" and (path := planned_file(world)):
        st = path.stat()
        data = bytearray(path.read_bytes())
        data[-8:] = bytes(255 - b for b in data[-8:])  # pixels: same size
        with open(path, "r+b") as fh:
            fh.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        world.edited.add(str(path.relative_to(world.root)))
    elif op == "vanish_media" and world.media_saved is None:
        world.named = {}
        for key in objects(client, world.bucket):
            fields = parse_key(key, cfg.s3.key_template)
            if fields["name"] != FALLBACK_NAME:
                world.named[fields["image_id"]] = fields["name"]
        db = Path(cfg.database.url.removeprefix("sqlite:///"))
        world.media_saved = db.with_name("sidexis-saved.sqlite")
        shutil.copyfile(db, world.media_saved)
        with closing(sqlite3.connect(db)) as conn:
            if rng.random() < 0.5:  # the whole table (a restore), or a few rows
                conn.execute("DELETE FROM MediaBase")
            else:
                ids = [r[0] for r in conn.execute("SELECT MediaBaseId FROM MediaBase")]
                for image_id in rng.sample(ids, min(len(ids), rng.randint(1, 3))):
                    conn.execute("DELETE FROM MediaBase WHERE MediaBaseId = ?", (image_id,))
            conn.commit()
    elif op == "restore_media" and world.media_saved is not None:
        db = Path(cfg.database.url.removeprefix("sqlite:///"))
        shutil.copyfile(world.media_saved, db)
        world.media_saved = None
    elif op == "future_clock":
        # a clock that ran ahead dated everything the runs wrote: the rows' confirmations and
        # the incremental marks (which send the next incremental run back to a full one)
        with catalog.engine.begin() as conn:
            future = {"t": "2099-01-01 00:00:00"}
            conn.execute(sa.text("UPDATE images SET verified_at = :t, checked_at = :t"), future)
            conn.execute(sa.text("UPDATE patient_marks SET recorded_at = :t"), future)
            conn.execute(sa.text("UPDATE full_runs SET started_at = :t"), future)
            every = {r[0] for r in conn.execute(sa.text("SELECT key FROM images"))}
        assert future_dated(catalog) == every  # the model reads what it wrote
    elif op == "foreign_row":
        mine = [r for r in images_of(catalog, cfg).rows() if r.state == VERIFIED]
        if not mine:
            return
        row = rng.choice(mine)
        other = catalog.images("other-clinic", images_of(catalog, cfg).destination)
        claim = PendingItem(row.key, "P_9/0000_9.dcm", 999_999_999, row.patient_guid)
        refused = other.begin_upload([claim], f"other-{world.steps}")
        assert set(refused) == {row.key}, refused
        assert images_of(catalog, cfg).lookup([row.key])[row.key] == row
    elif op == "full_sync":
        world.future_keys = future_dated(catalog)
        run = sync(catalog, cfg, f"run-{world.steps}", full=True)
        check_clean_sync(world, catalog, client, run, full=True)
    elif op == "touch" and (path := planned_file(world)):
        os.utime(path, ns=(time.time_ns(), time.time_ns() + rng.randrange(1, 10**9)))
    elif op in ("s3_delete", "s3_overwrite"):
        stored = sorted(objects(client, world.bucket))
        if not stored:
            return
        key = rng.choice(stored)
        if op == "s3_delete":
            client.delete_object(Bucket=world.bucket, Key=key)
        else:
            data = bytearray(body(client, world.bucket, key))
            data[len(data) // 2] ^= 0xFF  # same size, other bytes
            client.put_object(Bucket=world.bucket, Key=key, Body=bytes(data))
        world.tampered.setdefault(world.bucket, set()).add(key)
    elif op == "empty_during_sync" and (path := planned_file(world)):
        data, st = path.read_bytes(), path.stat()
        path.write_bytes(b"")
        try:
            sync(catalog, cfg, f"run-{world.steps}")
        finally:
            path.write_bytes(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif op == "switch_bucket":
        world.bucket = OTHER_BUCKET if world.bucket == BUCKET else BUCKET
    elif op == "kill_sync":
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_SYNC, str(world.config_file()), world.catalog_url],
            cwd=Path(__file__).parents[2],
            env={**os.environ},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    elif op == "sync":
        world.future_keys = future_dated(catalog)
        run = sync(catalog, cfg, f"run-{world.steps}")
        check_clean_sync(world, catalog, client, run)
    elif op == "verify":
        check_verify(world, catalog, client)
    elif op == "orthanc_down" and world.orthanc is not None:
        # an Orthanc that does not answer: S3 is synced as usual, Orthanc gets nothing
        world.future_keys = future_dated(catalog)
        silent = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        gone = cfg.orthanc.model_copy(update={"url": silent})
        run = sync(catalog, cfg.model_copy(update={"orthanc": gone}), f"run-{world.steps}")
        assert run.summary.orthanc is not None and run.summary.orthanc.unavailable, run.summary
        check_clean_sync(world, catalog, client, run, orthanc_down=True)
    elif op == "two_syncs":
        errors: list[BaseException] = []
        results: list[SyncRun] = []

        def one(n: int) -> None:
            try:
                results.append(sync(catalog, cfg, f"run-{world.steps}-{n}"))
            except BaseException as exc:  # noqa: BLE001 - collected and checked
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors
        done = [r for r in results if r.busy is None]
        # one ran, or both in turn; one refused was refused by the lock, naming the holder
        assert len(done) >= 1 and all(not r.summary.failed for r in done)
        assert all(isinstance(r.busy, ClinicBusyError) for r in results if r not in done)


def run_sequence(seed: int, tmp: Path, seaweed, client, request, orthanc) -> int:
    rng = random.Random(seed)
    for bucket in (BUCKET, OTHER_BUCKET):
        empty_bucket(client, bucket)
    transfer = {
        "recheck_days": rng.choice([0, 7]),
        "rehash_days": rng.choice([1, 30]),
        "batch_size": rng.choice([3, 50]),
        "max_attempts": 2,
    }
    with_orthanc = seed % 4 < 2
    if with_orthanc:  # a new clinic's Orthanc: what an earlier sequence stored is gone
        with httpx.Client(auth=(orthanc.user, orthanc.password)) as http:
            for patient in http.get(f"{orthanc.url}/patients").json():
                http.delete(f"{orthanc.url}/patients/{patient}").raise_for_status()
    with ExitStack() as stack:
        site = open_site(
            stack,
            tmp,
            seaweed,
            request,
            transfer=transfer,
            orthanc={"url": orthanc.url, "username": orthanc.user, "max_attempts": 2}
            if with_orthanc
            else None,
            settings={
                "retire_max_fraction": 1.0,  # the model deletes many files of a small clinic
                # every other sequence with incremental runs (ADR 0010): a sync then reads
                # only the patients whose rows or patientGuids changed, a full sync (or
                # every 7 days) all
                "incremental": seed % 2 == 1,
            },
            patients=12,
            images_per_patient=(1, 2),
            seed=seed,
        )
        assert len(site.clinic.expected) >= 3
        world = World(
            root=Path(site.clinic.pdata_root),
            config_path=site.config,
            catalog_url=f"sqlite:///{tmp / 'state' / 'catalog.sqlite'}",
            rng=rng,
            orthanc=orthanc if with_orthanc else None,
        )
        catalog = Catalog.open(world.catalog_url)
        try:
            ops = ["sync"] + [rng.choice(OPS) for _ in range(STEPS - 1)] + ["sync", "verify"]
            for n, op in enumerate(ops):
                world.steps += 1
                try:
                    step(world, op, catalog, client)
                    check_invariants(world, catalog, client)
                except AssertionError as exc:  # name the replay: seed and the ops so far
                    raise AssertionError(f"seed {seed}, ops {ops[: n + 1]}: {exc}") from exc
        finally:
            catalog.close()
    MODES.update(world.modes)
    if with_orthanc:
        MODES["with Orthanc"] += world.modes.get("full", 0) + world.modes.get("incremental", 0)
    return world.steps


# about 5 s a sequence on 2 cores; the suite's default timeout would cut a long run short
@pytest.mark.timeout(max(300, 30 * SEQUENCES))
def test_catalog_invariants_hold_over_random_sequences(
    request, tmp_path, seaweed, orthanc, monkeypatch
):
    client = seaweed.client()
    monkeypatch.setenv("PDATA_SYNC_ORTHANC_PASSWORD", orthanc.password)
    client.create_bucket(Bucket=OTHER_BUCKET)
    # the other bucket keeps versions (as a bucket with Object Lock does): a retirement or a
    # DELETE behind the product's back leaves a delete marker, an overwrite a non-current
    # version, and the invariants must hold over what the bucket lists as current
    client.put_bucket_versioning(Bucket=OTHER_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    steps = 0
    try:
        for seed in range(FIRST_SEED, FIRST_SEED + SEQUENCES):
            steps += run_sequence(seed, tmp_path / f"seq{seed}", seaweed, client, request, orthanc)
            shutil.rmtree(tmp_path / f"seq{seed}", ignore_errors=True)
    finally:
        empty_bucket(client, OTHER_BUCKET)
        destroy_versions(client, OTHER_BUCKET)
        client.delete_bucket(Bucket=OTHER_BUCKET)
        empty_bucket(client, BUCKET)
    record_model_run((SEQUENCES, steps, round(time.monotonic() - started, 1)))
    assert steps >= SEQUENCES * STEPS
    print(f"clean syncs by mode: {dict(MODES)}")
    if SEQUENCES > 1:  # odd seeds ran incremental syncs, really: not silently full ones
        assert MODES["incremental"] > 0 and MODES["full"] > 0, MODES
        assert MODES["with Orthanc"] > 0, MODES


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-n0"]))
