"""OrthancBatch on its own against a real Orthanc and a real SQLite catalog: which bytes go
to Orthanc, and what a server that stops answering costs."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from pdata_sync.base.config import OrthancConfig
from pdata_sync.catalog import Catalog, default_catalog_url
from pdata_sync.demo.generate import write_dicom
from pdata_sync.orthanc.client import OrthancClient
from pdata_sync.orthanc.store import (
    O_FAILED,
    O_REJECTED,
    O_STORED,
    O_UNCHANGED,
    OrthancBatch,
    Verified,
)


@pytest.fixture
def parts(tmp_path, orthanc):
    catalog = Catalog.open(default_catalog_url(tmp_path / "state"))
    cfg = OrthancConfig(url=orthanc.url, username=orthanc.user, max_attempts=2)
    with OrthancClient(cfg, orthanc.password) as client:
        yield orthanc, catalog.orthanc("c1", orthanc.url), client, tmp_path / "pdata"
    catalog.close()


def image(root: Path, n: int) -> tuple[Verified, bytes]:
    path = root / f"P_{n}" / f"0000_{n}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(
        path,
        rng=random.Random(n),
        clinic_id="c1",
        patient_id=n,
        patient_name="Test^Patient",
        birth_date="19700101",
        image_id=n,
        modality="IO",
        rows=16,
        cols=16,
    )
    data = path.read_bytes()
    key = f"images/g/c1_{n}_x.dcm"
    return Verified(key, str(path.relative_to(root)), hashlib.sha256(data).hexdigest()), data


def test_the_verified_bytes_go_to_orthanc_from_the_file_or_else_from_s3(parts):
    orthanc, records, client, root = parts
    (same, same_bytes), (edited, edited_bytes), (lost, _) = (image(root, n) for n in (1, 2, 3))
    s3 = {same.key: same_bytes, edited.key: edited_bytes, lost.key: b"something else"}
    # after S3 verified them, two files change in PDATA
    (root / edited.rel_path).write_bytes(edited_bytes + b"\0\0")
    (root / lost.rel_path).write_bytes(b"changed too")
    batch = OrthancBatch(client, records, root, s3.__getitem__)

    outcomes = {o.key: o for o in batch.store([same, edited, lost], concurrency=2)}
    assert outcomes[same.key].status == O_STORED
    assert outcomes[edited.key].status == O_STORED  # sent from S3: the verified content
    assert outcomes[lost.key].status == O_FAILED
    assert outcomes[lost.key].reason == (
        "not sent: neither the file nor the S3 object has the verified content"
    )
    held = {r.key: r for r in records.held()}
    assert set(held) == {same.key, edited.key}
    with orthanc.http() as http:
        for key in held:
            stored = http.get(f"/instances/{held[key].instance_id}/file").content
            assert stored == s3[key]

    # the same batch again: nothing sent for what Orthanc holds
    again = {o.key: o.status for o in batch.store([same, edited], concurrency=2)}
    assert again == {same.key: O_UNCHANGED, edited.key: O_UNCHANGED}


def test_a_rejection_is_recorded_and_not_sent_again_until_asked(parts):
    orthanc, records, client, root = parts
    root.mkdir(parents=True, exist_ok=True)
    (root / "bad.dcm").write_bytes(b"DICM? no")
    bad = Verified("images/g/c1_9_bad.dcm", "bad.dcm", hashlib.sha256(b"DICM? no").hexdigest())
    batch = OrthancBatch(client, records, root, lambda key: b"")
    (first,) = batch.store([bad], concurrency=1)
    assert first.status == O_REJECTED and first.reason.startswith("refused by Orthanc: ")
    orthanc.stop()  # a second run must not need Orthanc for it
    (second,) = batch.store([bad], concurrency=1)
    assert second.status == O_REJECTED and "not sent again" in second.reason


def test_once_orthanc_stops_answering_the_rest_of_the_batch_is_not_attempted(parts):
    orthanc, records, client, root = parts
    images = [image(root, n)[0] for n in range(10, 16)]
    orthanc.stop()
    outcomes = OrthancBatch(client, records, root, lambda key: b"").store(images, concurrency=1)
    assert [o.status for o in outcomes] == [O_FAILED] * len(images)
    assert outcomes[0].reason.startswith("Orthanc: ConnectError")
    assert all(o.reason.startswith("not attempted: Orthanc: ") for o in outcomes[1:])
    assert records.held() == []
