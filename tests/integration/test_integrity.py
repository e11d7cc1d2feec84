"""Integrity with real processes against SeaweedFS: a sync killed with SIGKILL mid-multipart
resumes to exactly the expected objects, and ``verify`` reports objects deleted, overwritten
or unknown behind the catalog's back (catalog on SQLite and on a real PostgreSQL)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pdata_sync.catalog import VERIFIED, Catalog, default_catalog_url, destination_of
from tests.conftest import (
    BUCKET,
    CLI,
    assert_exactly_expected,
    run_cli,
    stored_objects,
)
from tests.support.fault_proxy import Fault, FaultProxy


def open_uploads(client) -> list[dict]:
    return client.list_multipart_uploads(Bucket=BUCKET, Prefix="images/").get("Uploads", [])


def test_sigkill_mid_multipart_then_rerun_converges(make_site, seaweed, tmp_path):
    with FaultProxy(seaweed.endpoint, "s3") as proxy:
        site = make_site(
            endpoint=proxy.url,
            transfer={"multipart_threshold_mb": 5, "part_size_mb": 5, "upload_concurrency": 4},
            patients=12,
            large_files=1,
            large_mb=24,
        )
        clinic, client, config = site.clinic, site.client, site.config
        env = {**os.environ, **site.env}
        big = max(clinic.expected, key=lambda e: Path(clinic.pdata_root, e["path"]).stat().st_size)
        assert Path(clinic.pdata_root, big["path"]).stat().st_size > 20 * 1024 * 1024
        destination = destination_of(proxy.url, BUCKET)
        # Parts of the big file crawl (1 s each, well inside the timeouts), so the kill
        # lands while its multipart upload is open and other objects have landed.
        proxy.set(Fault("delay", delay=1.0, match=lambda m, p: m == "PUT" and "partNumber=" in p))
        proc = subprocess.Popen(
            [CLI, "sync", "--config", str(config), "--json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            landed = client.list_objects_v2(Bucket=BUCKET, Prefix="images/").get("KeyCount", 0)
            if open_uploads(client) and landed >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sync ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proxy.clear()

        # Killed mid-multipart: the upload is open, no partial object is visible.
        assert open_uploads(client), "no multipart upload was open at the kill"
        landed = stored_objects(client)
        assert 3 <= len(landed) < len(clinic.expected)
        prefix = f"images/{big['patient_guid']}/{clinic.clinic_id}_{big['image_id']}_"
        assert not any(k.startswith(prefix) for k in landed)
        sources = {
            f"images/{e['patient_guid']}/{clinic.clinic_id}_{e['image_id']}_": e
            for e in clinic.expected
        }
        for key, body in landed.items():  # what landed is whole
            entry = next(e for p, e in sources.items() if key.startswith(p))
            assert body == Path(clinic.pdata_root, entry["path"]).read_bytes()

        out = run_cli(["sync", "--config", str(config), "--json"], env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["interrupted_uploads_aborted"] >= 1
    assert summary["uploaded"] + summary["unchanged"] == len(clinic.expected)
    assert summary["unchanged"] >= len(landed)  # what landed was not sent again
    assert_exactly_expected(client, clinic)
    assert open_uploads(client) == []
    catalog = Catalog.open(default_catalog_url(tmp_path / "state"))
    rows = catalog.images(clinic.clinic_id, destination).rows()
    catalog.close()
    assert len(rows) == len(clinic.expected) and all(r.state == VERIFIED for r in rows)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_verify_reports_drift_and_changes_nothing(backend, request, make_site):
    settings, env = {}, dict(os.environ)
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        name = f"catalog_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(12)
        settings["catalog"] = {"url": pg.create_database(name, f"owner_{name}", password)}
        env["PDATA_SYNC_CATALOG_PASSWORD"] = password
    site = make_site(settings=settings, patients=8)
    clinic, client, config = site.clinic, site.client, site.config
    env.update(site.env)

    def cli(*args: str):
        out = run_cli([*args, "--config", str(config), "--json"], env)
        assert out.returncode in (0, 1), out.stderr[-3000:]
        return out.returncode, json.loads(out.stdout)

    code, summary = cli("sync")
    assert code == 0 and summary["uploaded"] == len(clinic.expected)
    clean = stored_objects(client)
    code, report = cli("verify")
    assert code == 0 and report["ok"], report
    assert report["verified_ok"] == report["rows"] == len(clinic.expected)
    assert stored_objects(client) == clean  # a clean archive: verify changes nothing

    keys = sorted(assert_exactly_expected(client, clinic).values())
    deleted, overwritten = keys[0], keys[1]
    guid = overwritten.split("/")[1]
    unknown = f"images/{guid}/{clinic.clinic_id}_999999_stray.dcm"
    foreign = f"images/{guid}/other-clinic_5_x.dcm"  # another clinic's: not ours to report
    client.delete_object(Bucket=BUCKET, Key=deleted)
    client.put_object(Bucket=BUCKET, Key=overwritten, Body=b"DICM overwritten")
    client.put_object(Bucket=BUCKET, Key=unknown, Body=b"stray")
    client.put_object(Bucket=BUCKET, Key=foreign, Body=b"theirs")
    before = stored_objects(client)

    code, report = cli("verify")
    assert code == 1 and not report["ok"]
    assert report["missing"] == [deleted]
    assert [c["key"] for c in report["changed"]] == [overwritten]
    assert "size" in report["changed"][0]["reason"]
    assert report["unknown"] == [unknown]
    assert report["verified_ok"] == len(clinic.expected) - 2
    assert stored_objects(client) == before  # verify changed nothing
    if backend == "postgresql":
        return  # the catalog backend matters up to here; the rest is the same code

    # a same-size overwrite is caught by the ETag (S3's checksum of the content)
    body = before[keys[2]]
    client.put_object(Bucket=BUCKET, Key=keys[2], Body=bytes([body[0] ^ 1]) + body[1:])
    code, report = cli("verify")
    assert {c["key"] for c in report["changed"]} == {overwritten, keys[2]}
    assert any("ETag" in c["reason"] for c in report["changed"])

    # the next sync repairs what the catalog says must be there; verify agrees
    code, summary = cli("sync")
    assert code == 0 and summary["uploaded"] == 3
    code, report = cli("verify")
    assert report["missing"] == [] and report["changed"] == [] and report["unknown"] == [unknown]
    client.delete_object(Bucket=BUCKET, Key=unknown)
    client.delete_object(Bucket=BUCKET, Key=foreign)
    code, report = cli("verify")
    assert code == 0 and report["ok"]
