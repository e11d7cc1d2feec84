"""Uploading a batch against a real SeaweedFS on 127.0.0.1 (the tests' session server): the
single PUTs go through obstore, which no in-process mock intercepts, and SeaweedFS checks
the SHA-256 each upload carries."""

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pydicom
import pytest

from pdata_sync.archive import s3_put
from pdata_sync.archive.s3_client import make_client
from pdata_sync.archive.uploads import METADATA_KEYS
from pdata_sync.base.config import parse_config
from pdata_sync.demo.generate import write_dicom
from pdata_sync.identity.keys import decode_name_from_metadata, thumbnail_key
from pdata_sync.pipeline.plan import PlannedImage
from pdata_sync.pipeline.report import BatchReport
from pdata_sync.pipeline.uploader import (
    FAILED,
    REJECTED,
    UNCHANGED,
    UPLOADED,
    BatchUploader,
    compare_workers,
    each_in_threads,
)
from pdata_sync.viewer import render as render_module
from pdata_sync.viewer.render import render
from tests.kit.s3 import empty_bucket

G1 = "11111111-1111-4111-8111-111111111111"
G2 = "22222222-2222-4222-8222-222222222222"
BUCKET = "dental-images"
ENDPOINT: str | None = None  # the session's SeaweedFS, set by the s3 fixture


def config(root: Path, bucket: str = "dental-images", thumbnails: bool = True, **transfer):
    return parse_config(
        {
            "thumbnails": thumbnails,
            "clinic_id": "c-1",
            "pdata_root": str(root),
            "database": {"url": "sqlite:////nonexistent.db", "schema": None},
            "resolver": {"url": "http://127.0.0.1:9/x"},
            "s3": {"bucket": bucket, "region": "us-east-1", "endpoint_url": ENDPOINT},
            "transfer": {"max_attempts": 1, **transfer},
        }
    )


def dcm(root: Path, rel: str, image_id: int, frames: int = 1, seed: int = 0) -> Path:
    path = root / rel
    write_dicom(
        path,
        rng=random.Random(seed + image_id),
        clinic_id="c-1",
        patient_id=1,
        patient_name="Muster^Anna",
        birth_date="19800101",
        image_id=image_id,
        modality="IO",
        rows=64,
        cols=64,
        frames=frames,
    )
    return path


def item(rel, guid, image_id, name="OPG"):
    return PlannedImage(rel, guid, image_id, name, f"images/{guid}/c-1_{image_id}_x.dcm")


@pytest.fixture
def s3(seaweed, monkeypatch):
    """The session's SeaweedFS with an empty bucket, and its credentials in the environment
    (boto3's standard chain, as on a worker)."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(f"{__name__}.ENDPOINT", seaweed.endpoint)
    client = seaweed.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    empty_bucket(client, BUCKET)
    yield client


def test_upload_then_unchanged_then_changed(tmp_path, s3):
    cfg = config(tmp_path)
    p1 = dcm(tmp_path, "P_1/0000_10.dcm", 10)
    dcm(tmp_path, "P_1/0000_11.dcm", 11)
    items = [
        item("P_1/0000_10.dcm", G1, 10, "Bissflügel links"),
        item("P_1/0000_11.dcm", G1, 11),
        item("P_1/0000_11.dcm", G2, 11),
    ]
    up = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer))

    first = up.upload_batch(items)
    assert [o.status for o in first] == [UPLOADED] * 3
    head = s3.head_object(Bucket="dental-images", Key=items[0].key)
    assert head["ContentType"] == "application/dicom"
    assert set(head["Metadata"]) == set(METADATA_KEYS)
    assert head["Metadata"]["sha256"] == hashlib.sha256(p1.read_bytes()).hexdigest()
    assert decode_name_from_metadata(head["Metadata"]["image-name"]) == "Bissflügel links"
    assert head["Metadata"]["image-id"] == "10" and head["Metadata"]["modality"] == "IO"
    body = s3.get_object(Bucket="dental-images", Key=items[0].key)["Body"].read()
    assert body == p1.read_bytes()

    second = up.upload_batch(items)
    assert [o.status for o in second] == [UNCHANGED] * 3

    dcm(tmp_path, "P_1/0000_10.dcm", 10, seed=99)  # same size, new content
    third = up.upload_batch(items)
    assert [o.status for o in third] == [UPLOADED, UNCHANGED, UNCHANGED]
    body = s3.get_object(Bucket="dental-images", Key=items[0].key)["Body"].read()
    assert body == p1.read_bytes()


def test_bad_files_rejected_unreadable_ones_failed_and_the_rest_goes_on(tmp_path, s3):
    cfg = config(tmp_path)
    (tmp_path / "P_1").mkdir()
    (tmp_path / "P_1/0000_1.dcm").write_bytes(b"")
    (tmp_path / "P_1/0000_2.dcm").write_text("not dicom" * 50)
    dcm(tmp_path, "P_1/0000_3.dcm", 3)
    items = [
        item("P_1/0000_1.dcm", G1, 1),
        item("P_1/0000_2.dcm", G1, 2),
        item("P_1/0000_3.dcm", G1, 3),
        item("P_1/0000_4.dcm", G1, 4),
    ]
    out = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(items)
    assert [(o.status, o.reason.split(" (")[0]) for o in out[:3]] == [
        (REJECTED, "empty file"),
        (REJECTED, "not a DICOM file"),
        (UPLOADED, ""),
    ]
    # a file that cannot be read (gone, permission denied) is the environment: failed
    assert out[3].status == FAILED and "FileNotFoundError" in out[3].reason
    assert out[3].reason.startswith("cannot read the file")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dental-images").get("Contents", [])]
    assert keys == [items[2].key, thumbnail_key(items[2].key)]
    assert [o.thumbnail for o in out] == ["", "", "made", ""]


def test_multipart_for_large_files_round_trips_and_is_unchanged_after(tmp_path, s3):
    cfg = config(tmp_path, multipart_threshold_mb=5, part_size_mb=5)
    path = dcm(tmp_path, "P_1/0000_7.dcm", 7, frames=700)  # 64*64*2*700 = 5.7 MB
    assert path.stat().st_size > 5 * 1024 * 1024
    items = [item("P_1/0000_7.dcm", G1, 7)]
    up = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer))
    assert up.upload_batch(items)[0].status == UPLOADED
    listed = s3.list_objects_v2(Bucket="dental-images", Prefix="images/")["Contents"][0]
    assert listed["ETag"].strip('"').endswith("-2")
    body = s3.get_object(Bucket="dental-images", Key=items[0].key)["Body"].read()
    assert body == path.read_bytes()
    assert up.upload_batch(items)[0].status == UNCHANGED
    assert s3.list_multipart_uploads(Bucket="dental-images").get("Uploads", []) == []


def test_missing_bucket_stops_the_batch_with_one_clear_reason(tmp_path, s3):
    cfg = config(tmp_path, bucket="no-such-bucket", upload_concurrency=1)
    for i in (3, 4, 5):
        dcm(tmp_path, f"P_1/0000_{i}.dcm", i)
    out = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(
        [item(f"P_1/0000_{i}.dcm", G1, i) for i in (3, 4, 5)]
    )
    assert all(o.status == FAILED and o.fatal for o in out)
    assert out[0].reason == "S3: bucket 'no-such-bucket' does not exist (s3.bucket)"
    assert all(o.reason.startswith("not attempted: S3: bucket") for o in out[1:])


class _Lying:
    """A client through which S3's reports differ from what was sent: a PUT answers another
    ETag, a HEAD one byte less. S3 did not confirm the upload. Such a server does not check
    the SHA-256 sent either (it accepts one that is not the body's)."""

    def __init__(self, client, monkeypatch):
        self._client = client
        s3_put.register(self, s3_put.settings_of(client))
        real_put = s3_put.put_object

        def lying_put(client, *args, **kwargs):
            etag = real_put(client, *args, **kwargs)
            return "0" * 32 if isinstance(client, _Lying) else etag

        monkeypatch.setattr(s3_put, "put_object", lying_put)

    def __getattr__(self, name):
        return getattr(self._client, name)

    def head_object(self, **kwargs):
        response = self._client.head_object(**kwargs)
        return {**response, "ContentLength": response["ContentLength"] - 1}

    def put_object(self, ChecksumSHA256=None, **kwargs):  # noqa: N803 - boto3's name
        return self._client.put_object(**kwargs)


def test_catalog_verifies_only_what_s3_confirms_and_skips_reading_verified_files(
    tmp_path, s3, monkeypatch
):
    from pdata_sync.catalog import ACCEPTED, VERIFIED, Catalog, destination_of

    root = tmp_path / "PDATA"
    dcm(root, "P_1/0000_1.dcm", 1)
    dcm(root, "P_1/0000_2.dcm", 2, frames=700)  # 5.7 MB: multipart, confirmed by HEAD
    items = [item("P_1/0000_1.dcm", G1, 1), item("P_1/0000_2.dcm", G1, 2)]
    cfg = config(root, multipart_threshold_mb=5, part_size_mb=5)
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    rows_of = catalog.images("c-1", destination_of(ENDPOINT, BUCKET))
    client = make_client(cfg.s3, cfg.transfer)

    lying = BatchUploader(cfg, _Lying(client, monkeypatch), rows_of, "run-1").upload_batch(items)
    assert [o.status for o in lying] == [FAILED, FAILED]
    assert "answered ETag" in lying[0].reason and "bytes after the upload" in lying[1].reason
    assert all("not verified" in o.reason for o in lying)
    assert not any("images/" in o.reason for o in lying)  # the key is beside the reason, not in it
    rows = rows_of.lookup([i.key for i in items])
    assert {r.state for r in rows.values()} == {ACCEPTED}  # never verified

    done = BatchUploader(cfg, client, rows_of, "run-2").upload_batch(items)
    assert [o.status for o in done] == [UNCHANGED, UNCHANGED]  # content already there
    rows = rows_of.lookup([i.key for i in items])
    assert {r.state for r in rows.values()} == {VERIFIED}

    # a verified row with the same path, size and mtime: the file is not read again
    def no_reading(*args, **kwargs):
        raise AssertionError("a verified, unchanged file was read")

    with monkeypatch.context() as m:
        m.setattr("pdata_sync.pipeline.uploader.file_digests", no_reading)
        m.setattr("pdata_sync.pipeline.uploader._read_stable", no_reading)
        again = BatchUploader(cfg, client, rows_of, "run-3").upload_batch(items)
    assert [o.status for o in again] == [UNCHANGED, UNCHANGED]

    # a changed file goes pending -> verified again, with the old content in the history
    dcm(root, "P_1/0000_1.dcm", 1, seed=99)
    liar = _Lying(client, monkeypatch)
    changed = BatchUploader(cfg, liar, rows_of, "run-4").upload_batch(items[:1])
    assert [o.status for o in changed] == [FAILED]
    assert rows_of.lookup([items[0].key])[items[0].key].state == "accepted"
    # S3 holds the new content (it just did not say so): the next run settles it, no upload
    changed = BatchUploader(cfg, client, rows_of, "run-5").upload_batch(items[:1])
    assert [o.status for o in changed] == [UNCHANGED]
    row = rows_of.lookup([items[0].key])[items[0].key]
    new_sha = hashlib.sha256((root / "P_1/0000_1.dcm").read_bytes()).hexdigest()
    assert row.state == VERIFIED and row.sha256 == new_sha
    history = rows_of.history(items[0].key)
    assert len(history) == 1 and history[0]["sha256"] != new_sha  # the old content
    catalog.close()


def test_confirmed_files_are_trusted_within_recheck_days_and_drift_is_repaired(tmp_path, s3):
    """A no-change run sends S3 nothing while the catalog's confirmations are fresh; an
    object deleted behind pdata-sync's back is found by verify (or once the window ends)
    and uploaded again, listing only the prefixes that need it."""
    import sqlalchemy as sa

    from pdata_sync.catalog import DRIFTED, VERIFIED, Catalog, destination_of
    from pdata_sync.identity.keys import patient_prefix
    from pdata_sync.pipeline.report import BatchReport, RunSummary
    from pdata_sync.pipeline.verify import verify_catalog

    root = tmp_path / "PDATA"
    for n in (1, 2, 3):
        dcm(root, f"P_1/0000_{n}.dcm", n)
    items = [
        item("P_1/0000_1.dcm", G1, 1),
        item("P_1/0000_2.dcm", G1, 2),
        item("P_1/0000_3.dcm", G2, 3),
    ]
    cfg = config(root)
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    rows_of = catalog.images("c-1", destination_of(ENDPOINT, BUCKET))
    client = make_client(cfg.s3, cfg.transfer)
    calls: list[tuple[str, str | None]] = []
    client.meta.events.register(
        "provide-client-params.s3",
        lambda model, params, **_: calls.append((model.name, params.get("Prefix"))),
    )

    def run(transfer_cfg=cfg):
        calls.clear()
        return BatchUploader(transfer_cfg, client, rows_of, "run").upload_batch(items)

    assert [o.status for o in run()] == [UPLOADED] * 3
    again = run()
    assert [(o.status, o.trusted) for o in again] == [(UNCHANGED, True)] * 3
    assert calls == []  # not one request
    summary = RunSummary(clinic_id="c-1")
    summary.add_batch(BatchReport.of(again))
    assert (summary.unchanged, summary.unchanged_by_catalog) == (3, 3)

    # deleted behind our back: inside the window the catalog still vouches for it ...
    s3.delete_object(Bucket="dental-images", Key=items[0].key)
    assert [o.status for o in run()] == [UNCHANGED] * 3 and calls == []
    # ... verify finds it and marks it drifted; the next sync lists G1 only and repairs it
    drift = verify_catalog(rows_of, client, "dental-images", lambda key: True)
    assert drift.missing == [items[0].key]
    assert rows_of.lookup([items[0].key])[items[0].key].state == DRIFTED
    repaired = run()
    assert [(o.status, o.trusted) for o in repaired] == [
        (UPLOADED, False),
        (UNCHANGED, True),
        (UNCHANGED, True),
    ]
    assert [c for c in calls if c[0] == "ListObjectsV2"] == [("ListObjectsV2", patient_prefix(G1))]
    assert s3.head_object(Bucket="dental-images", Key=items[0].key)["ContentLength"] > 0
    assert {r.state for r in rows_of.rows()} == {VERIFIED}

    # a confirmation older than the window: listed again, confirmed, trusted afterwards
    with catalog.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE images SET verified_at = '2020-01-01 00:00:00', checked_at = NULL")
        )
    s3.delete_object(Bucket="dental-images", Key=items[2].key)
    stale = run()
    assert [o.status for o in stale] == [UNCHANGED, UNCHANGED, UPLOADED]
    assert sorted(p for name, p in calls if name == "ListObjectsV2") == sorted(
        [patient_prefix(G1), patient_prefix(G2)]
    )
    assert [o.trusted for o in run()] == [True] * 3 and calls == []

    # recheck_days 0: every run lists every patient
    strict = config(root, recheck_days=0)
    assert [(o.status, o.trusted) for o in run(strict)] == [(UNCHANGED, False)] * 3
    assert len([c for c in calls if c[0] == "ListObjectsV2"]) == 2
    catalog.close()


def test_pixel_data_cut_short_is_archived_byte_for_byte_noted_and_flagged(tmp_path, s3):
    """Never lose what exists: a file whose pixel data is shorter than its header declares
    is uploaded as it is, listed in the run's notes and flagged on its catalog row."""
    import sqlalchemy as sa

    from pdata_sync.catalog import VERIFIED, Catalog, destination_of, images
    from pdata_sync.pipeline.report import BatchReport

    root = tmp_path / "PDATA"
    short = dcm(root, "P_1/0000_1.dcm", 1)
    short.write_bytes(short.read_bytes()[:-1000])
    dcm(root, "P_1/0000_2.dcm", 2)
    items = [item("P_1/0000_1.dcm", G1, 1), item("P_1/0000_2.dcm", G1, 2)]
    cfg = config(root)
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    rows_of = catalog.images("c-1", destination_of(ENDPOINT, BUCKET))
    out = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer), rows_of, "run-1").upload_batch(
        items
    )
    assert [o.status for o in out] == [UPLOADED, UPLOADED]
    assert out[0].note.startswith("pixel data cut short: ") and out[1].note == ""
    body = s3.get_object(Bucket="dental-images", Key=items[0].key)["Body"].read()
    assert body == short.read_bytes()
    report = BatchReport.of(out)
    assert [(n.path, n.reason) for n in report.notes] == [("P_1/0000_1.dcm", out[0].note)]
    with catalog.engine.connect() as conn:
        flags = dict(conn.execute(sa.select(images.c.key, images.c.source_defect)).all())
    assert flags == {items[0].key: out[0].note, items[1].key: None}
    assert {r.state for r in rows_of.lookup([i.key for i in items]).values()} == {VERIFIED}
    catalog.close()


def thumbnail_of(s3, key: str) -> dict:
    got = s3.get_object(Bucket="dental-images", Key=thumbnail_key(key))
    return {"type": got["ContentType"], "meta": got["Metadata"], "body": got["Body"].read()}


def test_new_image_gets_a_thumbnail_drawn_from_its_content(tmp_path, s3):
    cfg = config(tmp_path)
    path = dcm(tmp_path, "P_1/0000_5.dcm", 5)
    items = [item("P_1/0000_5.dcm", G1, 5)]
    [outcome] = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(items)
    assert outcome.thumbnail == "made"
    thumb = thumbnail_of(s3, items[0].key)
    assert thumb["type"] == "image/jpeg"
    assert thumb["body"] == render(path.read_bytes())
    assert thumb["meta"]["source-sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_multipart_image_gets_a_thumbnail_of_its_first_frame(tmp_path, s3):
    cfg = config(tmp_path, multipart_threshold_mb=5, part_size_mb=5)
    path = dcm(tmp_path, "P_1/0000_7.dcm", 7, frames=700)
    items = [item("P_1/0000_7.dcm", G1, 7)]
    [outcome] = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(items)
    assert outcome.status == UPLOADED and outcome.thumbnail == "made"
    assert thumbnail_of(s3, items[0].key)["body"] == render(path.read_bytes())


def test_image_that_cannot_be_drawn_is_archived_and_its_thumbnail_reported(tmp_path, s3):
    cfg = config(tmp_path)
    path = dcm(tmp_path, "P_1/0000_8.dcm", 8)
    ds = pydicom.dcmread(path)
    del ds.BitsAllocated  # DICOM enough to archive, not enough to draw
    ds.save_as(path)
    items = [item("P_1/0000_8.dcm", G1, 8)]
    [outcome] = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(items)
    assert outcome.status == UPLOADED
    assert outcome.thumbnail.startswith("thumbnail not made:")
    assert "Bits Allocated" in outcome.thumbnail
    report = BatchReport.of([outcome])
    assert report.thumbnails_made == 0
    assert [p.path for p in report.thumbnails_not_made] == ["P_1/0000_8.dcm"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dental-images")["Contents"]]
    assert keys == [items[0].key]


def test_thumbnails_switched_off_makes_none(tmp_path, s3):
    cfg = config(tmp_path, thumbnails=False)
    dcm(tmp_path, "P_1/0000_9.dcm", 9)
    items = [item("P_1/0000_9.dcm", G1, 9)]
    [outcome] = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(items)
    assert outcome.status == UPLOADED and outcome.thumbnail == ""
    assert "Contents" not in s3.list_objects_v2(Bucket="dental-images", Prefix="thumbnails/")


def test_each_in_threads_runs_every_item_once_in_at_most_n_threads_keeping_order():
    lock = threading.Lock()
    running, peak, seen = [0], [0], []

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append(threading.current_thread().name)
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        return i * i

    items = list(range(200))
    assert each_in_threads(work, items, 4, "pdata-upload") == [i * i for i in items]
    assert peak[0] == 4
    assert len(seen) == 200 and all(n.startswith("pdata-upload") for n in seen)
    assert each_in_threads(work, [], 4, "pdata-upload") == []


def test_each_in_threads_raises_the_first_failure_after_every_thread_stopped():
    def work(i: int) -> int:
        if i == 7:
            raise RuntimeError("item 7")
        return i

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="item 7"):
        each_in_threads(work, list(range(50)), 3, "pdata-upload")
    assert threading.active_count() == before


def test_images_s3_holds_are_compared_one_thread_per_core_and_new_ones_uploaded_together(
    tmp_path, s3, monkeypatch
):
    """A new worker compares what S3 holds without eight threads per batch fighting over
    the GIL on two cores, still uploads new images concurrently, and still uploads an image
    whose bytes differ from the object of the same size."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cfg = config(tmp_path, thumbnails=False, upload_concurrency=8, parallel_batches=2)
    assert compare_workers(cfg) == 1  # 2 cores shared by 2 batches in flight
    held = [item(f"P_1/0000_{n}.dcm", G1, n) for n in range(10, 16)]
    new = [item(f"P_2/0000_{n}.dcm", G2, n) for n in range(20, 26)]
    for i in held + new:
        dcm(tmp_path, i.rel_path, i.image_id)
    client = make_client(cfg.s3, cfg.transfer)
    assert [o.status for o in BatchUploader(cfg, client).upload_batch(held)] == [UPLOADED] * 6
    dcm(tmp_path, held[0].rel_path, held[0].image_id, seed=99)  # same size, other bytes

    pools: list[tuple[str, int, list[str]]] = []

    def spy(fn, items, workers, name):
        pools.append((name, workers, [i.key for i in items]))
        return each_in_threads(fn, items, workers, name)

    monkeypatch.setattr("pdata_sync.pipeline.uploader.each_in_threads", spy)
    outcomes = BatchUploader(cfg, client).upload_batch(held + new)  # no catalog: all listed

    assert [o.status for o in outcomes] == [UPLOADED] + [UNCHANGED] * 5 + [UPLOADED] * 6
    assert pools == [
        ("pdata-compare", 1, [i.key for i in held]),
        ("pdata-upload", 8, [i.key for i in new]),
    ]
    body = s3.get_object(Bucket=BUCKET, Key=held[0].key)["Body"].read()
    assert body == (tmp_path / held[0].rel_path).read_bytes()


def test_a_kept_version_is_claimed_only_for_the_bytes_that_were_archived(tmp_path, s3):
    """Before an upload replaces an object, its bytes are copied to retired/ and the
    catalog's history says where the replaced content was kept. When S3 held other bytes
    than were verified (changed behind pdata-sync's back), the copy is still made, but the
    history must not say the archived content is there: it is not (model test, seed 53)."""
    from pdata_sync.catalog import Catalog, destination_of

    root = tmp_path / "PDATA"
    dcm(root, "P_1/0000_1.dcm", 1)
    dcm(root, "P_1/0000_2.dcm", 2)
    items = [item("P_1/0000_1.dcm", G1, 1), item("P_1/0000_2.dcm", G1, 2)]
    cfg = config(root, recheck_days=0)  # every run lists the patient
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    rows_of = catalog.images("c-1", destination_of(ENDPOINT, BUCKET))
    client = make_client(cfg.s3, cfg.transfer)
    BatchUploader(cfg, client, rows_of, "run-1").upload_batch(items)

    # image 1's object is overwritten behind pdata-sync's back; image 2's is left alone
    tampered = b"not the archived bytes"
    s3.put_object(Bucket=BUCKET, Key=items[0].key, Body=tampered)
    dcm(root, "P_1/0000_1.dcm", 1, seed=7)  # both files change: both objects are replaced
    dcm(root, "P_1/0000_2.dcm", 2, seed=7)
    done = BatchUploader(cfg, client, rows_of, "run-2").upload_batch(items)
    assert [o.status for o in done] == [UPLOADED, UPLOADED], [o.reason for o in done]

    for it in items:
        (old,) = rows_of.history(it.key)
        if old["kept_at"] is not None:  # a claim: the archived content is there
            kept = s3.get_object(Bucket=BUCKET, Key=old["kept_at"])["Body"].read()
            assert hashlib.sha256(kept).hexdigest() == old["sha256"], it.key
    first, second = (rows_of.history(it.key)[0] for it in items)
    assert first["kept_at"] is None  # the archived content was no longer in S3
    assert second["kept_at"] is not None  # the unchanged object was kept, as it was
    retired = {
        o["Key"]: o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="retired/")["Contents"]
    }
    # nothing is overwritten without a copy: what S3 held at image 1's key is kept too
    assert any(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() == tampered for k in retired)
    catalog.close()


class _Drawing:
    """The renderer, slowed down, counting how many threads draw at once."""

    def __init__(self, monkeypatch):
        self.inside = 0
        self.most = 0
        self._lock = threading.Lock()
        real = render_module.render

        def slow_render(data, **kwargs):
            with self._lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                time.sleep(0.03)
                return real(data, **kwargs)
            finally:
                with self._lock:
                    self.inside -= 1

        monkeypatch.setattr(render_module, "render", slow_render)


@pytest.mark.parametrize("cpu_threads", [1, 3])
def test_cpu_threads_bounds_the_threads_drawing_at_once_not_the_uploads(
    tmp_path, s3, monkeypatch, cpu_threads
):
    cfg = config(tmp_path, upload_concurrency=8, cpu_threads=cpu_threads)
    items = []
    for n in range(12):
        dcm(tmp_path, f"P_1/0000_{n + 20}.dcm", n + 20)
        items.append(item(f"P_1/0000_{n + 20}.dcm", G1, n + 20))
    drawing = _Drawing(monkeypatch)
    out = BatchUploader(cfg, make_client(cfg.s3, cfg.transfer)).upload_batch(items)
    assert [o.thumbnail for o in out] == ["made"] * 12
    assert drawing.most == cpu_threads  # never more; and the uploads did run side by side


def test_cpu_threads_defaults_to_one_core_less_than_the_machine(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert config(Path("/x")).transfer.cpu_slots() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert config(Path("/x")).transfer.cpu_slots() == 1
    assert config(Path("/x"), cpu_threads=4).transfer.cpu_slots() == 4
