"""End to end: ``pdata-sync sync --json`` / ``retrieve`` as subprocesses against a real
SeaweedFS S3 server, a real resolver HTTP server (503, then 429, then answers), a real
SQLite database file and a real Prefect server, all on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from pdata_sync.archive.uploads import METADATA_KEYS
from pdata_sync.demo.generate import write_dicom
from pdata_sync.identity.keys import decode_name_from_metadata
from tests.conftest import (
    BUCKET,
    CLI,
    run_cli,
    tree_snapshot,
)

REFUSED = "BadDigest|SignatureDoesNotMatch|XAmzContentSHA256Mismatch"


def all_objects(client, prefix: str = "images/") -> dict[str, dict]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out


@pytest.fixture
def setup(make_site):
    """A clinic with one multipart file whose resolver answers 503, then 429, then."""
    site = make_site(
        transfer={"multipart_threshold_mb": 5, "part_size_mb": 5, "batch_size": 7},
        resolver_options={"fail_first": [503, 429]},
        large_files=1,
        large_mb=6,
    )
    env = {**site.env, "PREFECT_LOGGING_LEVEL": "INFO"}
    return site.clinic, site.client, site.resolver, site.config, env


def expected_objects(clinic) -> dict[str, dict]:
    """patient prefix + clinic + image id -> the file that must be there."""
    return {
        f"images/{e['patient_guid']}/{clinic.clinic_id}_{e['image_id']}_": e
        for e in clinic.expected
    }


def match(expected: dict[str, dict], keys) -> dict[str, str]:
    """expected prefix -> the one key that has it."""
    found: dict[str, str] = {}
    for key in keys:
        hits = [p for p in expected if key.startswith(p)]
        assert len(hits) == 1, f"unexpected object {key}"
        assert hits[0] not in found, f"two objects for {hits[0]}"
        found[hits[0]] = key
    return found


def test_sync_end_to_end(setup):
    clinic, client, resolver, config, env = setup
    pdata = Path(clinic.pdata_root)
    before = tree_snapshot(pdata)
    db_before = hashlib.sha256(Path(clinic.database_path).read_bytes()).hexdigest()

    # --- first run: everything uploads, through the resolver's 503 and 429 ---
    first = run_cli(["sync", "--config", str(config), "--json"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)  # stdout is exactly one JSON document
    assert resolver.state.statuses[:3] == [503, 429, 200]

    expected = expected_objects(clinic)
    objects = all_objects(client)
    found = match(expected, objects)
    assert set(found) == set(expected)
    assert summary["uploaded"] == len(expected) and summary["unchanged"] == 0
    assert summary["failed"] == []
    assert sorted(r["path"] for r in summary["rejected"]) == sorted(clinic.rejected_paths)
    assert {r["reason"] for r in summary["rejected"]} == {
        "empty file",
        "not a DICOM file (no DICM header)",
    }
    assert summary["skipped"] == clinic.skipped
    assert sorted(n["path"] for n in summary["notes"]) == sorted(clinic.no_media_row_paths)

    # every object byte-identical, with exactly the metadata of the issue
    with closing(sqlite3.connect(f"file:{clinic.database_path}?mode=ro", uri=True)) as db:
        names = dict(db.execute("SELECT MediaBaseId, Name FROM MediaBase"))
    sizes = []
    for prefix, key in found.items():
        source = (pdata / expected[prefix]["path"]).read_bytes()
        sizes.append(len(source))
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentType"] == "application/dicom"
        meta = head["Metadata"]
        assert set(meta) == set(METADATA_KEYS), key
        assert meta["sha256"] == hashlib.sha256(source).hexdigest()
        assert meta["clinic-id"] == clinic.clinic_id
        assert meta["image-id"] == str(expected[prefix]["image_id"])
        name = names.get(expected[prefix]["image_id"])  # None: no media row
        stored_as = name if name and name.strip() else "unnamed"
        assert decode_name_from_metadata(meta["image-name"]) == stored_as
        assert meta["modality"] in {"IO", "PX", "CT"}
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == source
    assert max(sizes) > 5 * 1024 * 1024  # the multipart path was exercised
    assert any(o["ETag"].strip('"').endswith("-2") for o in objects.values())

    # --- second run: nothing uploaded ---
    second = run_cli(["sync", "--config", str(config), "--json"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["uploaded"] == 0 and again["unchanged"] == len(expected)
    # all confirmed by S3 minutes ago: vouched for by the catalog, no S3 listing needed
    assert again["unchanged_by_catalog"] == len(expected)

    # --- a changed source file is uploaded again, and only it ---
    changed = next(e for e in clinic.expected if e["path"] not in clinic.no_media_row_paths)
    path = pdata / changed["path"]
    write_dicom(
        path,
        rng=random.Random(12345),
        clinic_id=clinic.clinic_id,
        patient_id=int(path.parent.name.removeprefix("P_")),  # its own patient (§10)
        patient_name="X^Y",
        birth_date="19900101",
        image_id=changed["image_id"],
        modality="IO",
        rows=20,
        cols=20,
    )
    copies = sum(1 for e in clinic.expected if e["path"] == changed["path"])
    third = run_cli(["sync", "--config", str(config), "--json"], env)
    assert third.returncode == 0, third.stderr[-3000:]
    after_change = json.loads(third.stdout)
    assert after_change["uploaded"] == copies
    assert after_change["unchanged"] == len(expected) - copies
    assert after_change["unchanged_by_catalog"] == len(expected) - copies
    key = found[f"images/{changed['patient_guid']}/{clinic.clinic_id}_{changed['image_id']}_"]
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == path.read_bytes()

    # PDATA and the database were never written (apart from the file this test changed)
    after = tree_snapshot(pdata)
    rel = str(path.relative_to(pdata))
    assert {k: v for k, v in after.items() if k != rel} == {
        k: v for k, v in before.items() if k != rel
    }
    assert hashlib.sha256(Path(clinic.database_path).read_bytes()).hexdigest() == db_before

    # no patient data in anything the runs printed, nor in any key
    printed = first.stdout + first.stderr + second.stderr + third.stderr
    for value in clinic.phi:
        if len(value) >= 4:
            assert value not in printed, "PHI in output"
            assert not any(value in k for k in objects), "PHI in a key"


def test_retrieve_lists_presigns_and_downloads(setup, tmp_path):
    clinic, client, resolver, config, env = setup
    assert run_cli(["sync", "--config", str(config), "--json"], env).returncode == 0
    guid = clinic.expected[0]["patient_guid"]
    mine = [e for e in clinic.expected if e["patient_guid"] == guid]

    out = run_cli(
        [
            "retrieve",
            "--config",
            str(config),
            "--patient-guid",
            guid,
            "--presign",
            "600",
            "--download",
            str(tmp_path / "dl"),
            "--json",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    images = json.loads(out.stdout)
    assert sorted(i["image_id"] for i in images) == sorted(e["image_id"] for e in mine)
    for image in images:
        assert set(image) >= {
            "key",
            "clinic_id",
            "image_id",
            "name",
            "size",
            "last_modified",
            "url",
            "path",
        }
        assert image["clinic_id"] == clinic.clinic_id
        source = next(
            Path(clinic.pdata_root, e["path"]) for e in mine if e["image_id"] == image["image_id"]
        )
        assert Path(image["path"]).read_bytes() == source.read_bytes()
        assert image["size"] == source.stat().st_size
        assert "X-Amz-Expires=600" in image["url"]
        assert httpx.get(image["url"]).content == source.read_bytes()


@pytest.mark.parametrize(
    "guid",
    [
        "",
        "images",
        "../x",
        "x/..",
        "*",
        "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71x",
        "3F2C8A54-1B7E-4C1E-9A3D-2B6F0C9E8D71",
    ],
)
def test_retrieve_refuses_non_canonical_guid_before_s3(tmp_path, guid, prefect_server):
    config = tmp_path / "c.yaml"
    config.write_text(
        "clinic_id: c\npdata_root: /nonexistent\n"
        "database: {url: 'sqlite:////nonexistent.db'}\n"
        "resolver: {url: 'http://127.0.0.1:9/x'}\n"
        # nothing listens on port 9: calling S3 would fail differently and slowly
        "s3: {bucket: dental-images, endpoint_url: 'http://127.0.0.1:9'}\n"
    )
    out = run_cli(
        ["retrieve", "--config", str(config), "--patient-guid", guid, "--json"],
        prefect_server.env(),
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert "patient GUID refused" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_retrieve_refuses_presign_over_seven_days_before_s3(tmp_path, prefect_server):
    config = tmp_path / "c.yaml"
    config.write_text(
        "clinic_id: c\npdata_root: /nonexistent\n"
        "database: {url: 'sqlite:////nonexistent.db'}\n"
        "resolver: {url: 'http://127.0.0.1:9/x'}\n"
        "s3: {bucket: dental-images, endpoint_url: 'http://127.0.0.1:9'}\n"
    )
    guid = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
    args = ["retrieve", "--config", str(config), "--patient-guid", guid, "--json"]
    out = run_cli([*args, "--presign", "604801"], prefect_server.env(), timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert "604801" in out.stderr and "7 days" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_config_is_refused_with_the_field_named(tmp_path, prefect_server):
    config = tmp_path / "c.yaml"
    config.write_text(
        "clinic_id: c\npdata_root: /x\ndatabase: {url: 'sqlite:///x.db'}\n"
        "resolver: {url: 'http://127.0.0.1:9/x'}\ns3: {bucket: A_B}\n"
    )
    out = run_cli(["sync", "--config", str(config), "--json"], prefect_server.env(), timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert "s3.bucket" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_missing_bucket_fails_fast_before_any_work(setup):
    clinic, client, resolver, config, env = setup
    text = config.read_text().replace(f"bucket: {BUCKET}", "bucket: no-such-bucket")
    config.write_text(text)
    out = run_cli(["sync", "--config", str(config), "--json"], env)
    assert out.returncode == 2 and out.stdout == ""
    assert "bucket 'no-such-bucket' does not exist" in out.stderr.strip().splitlines()[-1]
    assert resolver.state.requests == 0  # nothing else was touched


def test_wrong_checksum_is_refused_by_the_server(setup):
    """Integrity: a body damaged between client and server never lands (SeaweedFS checks
    the SHA-256 / MD5 we send; moto would not). Single PUTs (obstore) go through a proxy
    that flips a byte of every request body; multipart parts (botocore) are damaged after
    signing by an event hook."""
    from pdata_sync.archive.s3_client import make_client
    from pdata_sync.archive.uploads import put_multipart, put_small
    from pdata_sync.base.config import load_config
    from pdata_sync.source.dicom_meta import part_digests
    from tests.support.fault_proxy import Fault, FaultProxy

    clinic, client, resolver, config, env = setup
    cfg = load_config(config)
    os.environ.update(env)
    transfer = cfg.transfer.model_copy(update={"max_attempts": 2})
    evil = make_client(cfg.s3, transfer)
    data = Path(clinic.pdata_root, clinic.expected[0]["path"]).read_bytes()
    with FaultProxy(cfg.s3.endpoint_url) as proxy:
        proxy.set(Fault("corrupt-body", match=lambda method, path: method == "PUT"))
        through_proxy = make_client(cfg.s3.model_copy(update={"endpoint_url": proxy.url}), transfer)
        with pytest.raises(Exception, match=REFUSED):
            put_small(through_proxy, BUCKET, "images/x/corrupt.dcm", data, {"sha256": "x"})
        # boto3 asking whether the server checks SHA-256 (refused), then obstore's upload:
        # damaged, refused, sent again, refused
        assert proxy.state.faults_fired == 3

    damaged = []

    def corrupt(request, **kwargs):
        """Damage the body in transit: one byte flipped after the request was signed."""
        body = request.body
        data = body.read() if hasattr(body, "read") else bytes(body or b"")
        if len(data) > 100:
            request.body = data[:50] + bytes([data[50] ^ 0xFF]) + data[51:]
            damaged.append(len(data))

    evil.meta.events.register("before-send.s3.PutObject", corrupt)
    evil.meta.events.register("before-send.s3.UploadPart", corrupt)
    big = Path(clinic.pdata_root) / "big.bin"
    try:
        big.write_bytes(random.Random(1).randbytes(6 * 1024 * 1024))
        _, digests = part_digests(big, 5 * 1024 * 1024)
        with pytest.raises(Exception, match=REFUSED):
            put_multipart(
                evil,
                BUCKET,
                "images/x/corrupt-big.dcm",
                big,
                part_size=5 * 1024 * 1024,
                digests=digests,
                expected_size=big.stat().st_size,
                metadata={},
            )
    finally:
        big.unlink()
    assert len(damaged) >= 1  # the multipart path really sent damaged bodies
    # and an intact body with a wrong SHA-256 is refused: the server checks our checksum
    with pytest.raises(Exception, match="BadDigest"):
        client.put_object(
            Bucket=BUCKET,
            Key="images/x/wrong-sha.dcm",
            Body=data,
            ChecksumSHA256=base64.b64encode(hashlib.sha256(b"x").digest()).decode(),
        )
    assert all_objects(client, "images/x/") == {}
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_progress_on_a_terminal_only(setup):
    """The first sync of a clinic takes hours: on a terminal, stderr shows images done of
    the total, what is left, Mbit/s and the time left, updated in place; piped or with
    --json, nothing."""
    import pty

    clinic, client, resolver, config, env = setup
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(  # stdout and stderr on one terminal, as a person runs it
        [CLI, "sync", "--config", str(config)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=240)
    os.close(primary)
    assert proc.returncode == 0, seen.decode(errors="replace")[-3000:]
    terminal = seen.decode(errors="replace")
    # every planned object (the expected ones and the bad files that get rejected)
    done = re.findall(r"(\d+)/(\d+) images  [\d,]+ left  [\d.]+ Mbit/s", terminal)
    assert done and done[-1][0] == done[-1][1] and int(done[-1][1]) >= len(clinic.expected)
    assert "\r\x1b[K" in terminal  # rewritten in place
    # the status line is finished before the summary, and not drawn again after it
    first = re.search(rf"clinic {clinic.clinic_id}: \d+ uploaded", terminal)
    assert first is not None, terminal[-3000:]
    summary = terminal[first.start() :]
    assert "Mbit/s" not in summary and "\x1b[K" not in summary, summary
    assert re.search(r"MB uploaded in [\d.,]+ s; \d+ retired, \d+ note\(s\)", summary), summary

    piped = run_cli(["sync", "--config", str(config)], env)
    assert piped.returncode == 0 and "Mbit/s" not in piped.stderr + piped.stdout
    assert piped.stdout.startswith("clinic ")  # stdout: the summary only
