"""The catalog never claims what S3 does not hold: the reproductions of issue 13, each run as
an operator would (the CLI as a subprocess) against real SeaweedFS, the real resolver server
and a real Prefect server on 127.0.0.1.

1. another bucket (same state folder) starts from scratch instead of trusting old rows;
2. a drifted row whose re-upload is refused once stays drifted, and is repaired later;
3. a content-only confirmation (after ``touch``) keeps the run that uploaded the bytes;
4. a missing object on a HEAD is that image's failure, not "bucket does not exist";
5. two syncs of one clinic: the second refuses, naming the holder of the clinic's lock;
6. a verify that finds drift ends its flow run Failed (not Completed).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import (
    BUCKET,
    CLI,
    assert_exactly_expected,
    run_cli,
    stored_objects,
)
from tests.kit.s3 import empty_bucket
from tests.support.fault_proxy import Fault, FaultProxy


@pytest.fixture
def site(make_site):
    """A small clinic of at least five images."""
    site = make_site(patients=12, images_per_patient=(1, 2))
    assert len(site.clinic.expected) >= 5
    return site


def catalog_rows(tmp_path: Path) -> list[dict]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM images"))]
    engine.dispose()
    return rows


def test_another_bucket_starts_from_scratch(site, tmp_path):
    clinic, client, config, env = site.clinic, site.client, site.config, site.env
    code, first = site.sync()
    assert code == 0 and first["uploaded"] == len(clinic.expected)

    other = "dental-images-2"
    client.create_bucket(Bucket=other)
    try:
        data = yaml.safe_load(config.read_text())
        data["s3"]["bucket"] = other
        config.write_text(yaml.safe_dump(data))
        code, second = site.sync()
        assert code == 0, second
        # nothing is vouched for by rows of the other bucket: everything goes up again
        assert second["uploaded"] == len(clinic.expected), second
        assert second["unchanged_by_catalog"] == 0
        assert len(stored_objects(client, bucket=other)) == len(clinic.expected)
        out = run_cli(["verify", "--config", str(config), "--json"], env)
        assert out.returncode == 0, out.stdout + out.stderr[-2000:]
        assert json.loads(out.stdout)["missing"] == []
    finally:
        empty_bucket(client, other)
        client.delete_bucket(Bucket=other)


def test_a_drifted_row_stays_drifted_until_s3_holds_the_bytes(site, tmp_path):
    clinic, client, config, env = site.clinic, site.client, site.config, site.env
    assert site.sync()[0] == 0
    entry = clinic.expected[0]
    key = next(k for k in stored_objects(client) if f"_{entry['image_id']}_" in k)
    client.delete_object(Bucket=BUCKET, Key=key)

    out = run_cli(["verify", "--config", str(config), "--json"], env)
    assert out.returncode == 1 and json.loads(out.stdout)["missing"] == [key]

    # the file is briefly empty (being rewritten): this run rejects it
    path = Path(clinic.pdata_root) / entry["path"]
    content, stat = path.read_bytes(), path.stat()
    path.write_bytes(b"")
    code, summary = site.sync()
    assert entry["path"] in [r["path"] for r in summary["rejected"]], summary
    row = next(r for r in catalog_rows(tmp_path) if r["key"] == key)
    assert row["state"] == "drifted", "a refused re-upload made a missing object verified"

    # the file is back as it was: the next run must upload it, not trust the row
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, summary = site.sync()
    assert code == 0 and summary["uploaded"] == 1, summary
    assert_exactly_expected(client, clinic)


def test_a_content_match_keeps_who_uploaded_the_bytes(site, tmp_path):
    clinic = site.clinic
    assert site.sync()[0] == 0
    before = {r["key"]: r for r in catalog_rows(tmp_path)}
    entry = clinic.expected[0]
    path = Path(clinic.pdata_root) / entry["path"]
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # touched: same bytes, new mtime

    code, summary = site.sync()
    assert code == 0 and summary["uploaded"] == 0, summary
    after = {r["key"]: r for r in catalog_rows(tmp_path)}
    key = next(k for k, r in after.items() if r["rel_path"] == entry["path"])
    assert after[key]["state"] == "verified"
    assert after[key]["source_mtime_ns"] == path.stat().st_mtime_ns
    # the upload's record stays: when and by which run the bytes went up
    assert after[key]["uploaded_at"] == before[key]["uploaded_at"] is not None
    assert after[key]["flow_run_id"] == before[key]["flow_run_id"] is not None


def is_object_head(method: str, path: str) -> bool:
    return method == "HEAD" and "/images/" in path


def test_a_missing_object_on_head_fails_that_image_only(make_site, seaweed):
    """A multipart upload is confirmed by a HEAD; a 404 there is that object's problem."""
    with FaultProxy(seaweed.endpoint, "s3") as proxy:
        site = make_site(
            endpoint=proxy.url,
            transfer={"multipart_threshold_mb": 5, "part_size_mb": 5},
            patients=10,
            large_files=1,
            large_mb=6,
        )
        clinic = site.clinic
        sizes = [Path(clinic.pdata_root, e["path"]).stat().st_size for e in clinic.expected]
        assert max(sizes) > 5 * 2**20  # one multipart object
        proxy.set(Fault("status", status=404, match=is_object_head))
        out = run_cli(["sync", "--config", str(site.config), "--json"], site.env)
        assert proxy.state.faults_fired > 0
        assert out.returncode == 1, out.stderr[-3000:]
        summary = json.loads(out.stdout)
        assert len(summary["failed"]) == 1, summary["failed"]
        assert "not verified" in summary["failed"][0]["reason"]
        assert summary["uploaded"] == len(clinic.expected) - 1
        proxy.clear()
        code, summary = site.sync()
        assert code == 0, summary
    assert_exactly_expected(site.client, clinic)


def lock_holder(tmp_path: Path) -> dict | None:
    path = tmp_path / "state" / "catalog.sqlite"
    if not path.exists():
        return None
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM clinic_locks")).mappings().first()
            return None if row is None else dict(row)
    except sa.exc.OperationalError:  # not created yet
        return None
    finally:
        engine.dispose()


def test_two_syncs_of_one_clinic_the_second_refuses_naming_the_holder(make_site, seaweed, tmp_path):
    """The first sync is slowed down (each PUT held 2 s by a proxy); a second sync started
    while it holds the clinic refuses at once, and the first completes undisturbed."""
    with FaultProxy(seaweed.endpoint, "s3") as proxy:
        site = make_site(
            endpoint=proxy.url,
            transfer={"upload_concurrency": 2},
            patients=12,
            images_per_patient=(1, 2),
        )
        clinic, client, config = site.clinic, site.client, site.config
        env = {**os.environ, **site.env}
        proxy.set(Fault("delay", delay=2.0, match=lambda method, path: method == "PUT"))
        first = subprocess.Popen(
            [CLI, "sync", "--config", str(config), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while (holder := lock_holder(tmp_path)) is None and first.poll() is None:
            assert time.monotonic() < deadline, "the first sync never took the clinic's lock"
            time.sleep(0.2)
        assert holder is not None and holder["pid"] == first.pid
        second = run_cli(["sync", "--config", str(config), "--json"], env)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
        assert json.loads(out)["failed"] == []

    assert second.returncode == 75, second.stderr[-3000:]
    assert "IntegrityError" not in second.stderr and "Traceback" not in second.stderr
    # Prefect may log its event drain after ours when the machine is busy: our one line
    ours = [x for x in second.stderr.splitlines() if x.startswith("pdata-sync:")]
    assert len(ours) == 1, second.stderr[-3000:]
    line = ours[0]
    assert line.startswith(f"pdata-sync: clinic {clinic.clinic_id} is busy: sync by host ")
    assert f"pid {first.pid} (flow run {holder['flow_run_id']}) since 20" in line
    assert lock_holder(tmp_path) is None  # released when the first run ended
    assert_exactly_expected(client, clinic)


def test_verify_with_drift_ends_the_flow_run_failed(site, prefect_server):
    client, config, env = site.client, site.config, site.env
    assert site.sync()[0] == 0
    key = next(iter(stored_objects(client)))
    client.delete_object(Bucket=BUCKET, Key=key)
    out = run_cli(["verify", "--config", str(config), "--json"], env)
    assert out.returncode == 1 and json.loads(out.stdout)["missing"] == [key]

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with SyncPrefectClient(prefect_server.api_url) as prefect:
        runs = prefect.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["verify-clinic"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    state = runs[0].state
    assert state.is_failed(), state
    assert "1 object(s) differ" in (state.message or "")
