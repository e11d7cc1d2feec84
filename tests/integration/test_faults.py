"""Fault injection with real processes: a fault proxy on 127.0.0.1 between pdata-sync and the
real S3 server (SeaweedFS), and between pdata-sync and the real resolver server.

For each fault: the run either succeeds through retries, or ends with every affected image
in ``failed`` with its reason (never silently missing, never corrupted); a run that failed
is followed, the fault removed, by one more run. Either way the bucket ends with exactly the
expected contents, byte-identical, every catalog row verified, no multipart upload open.
The table of results is printed at the end of the test session."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from pdata_sync.catalog import VERIFIED, Catalog, default_catalog_url, destination_of
from tests.conftest import (
    BUCKET,
    record_fault_row,
    stored_objects,
)
from tests.support.fault_proxy import Fault, FaultProxy


def is_put(method: str, path: str) -> bool:
    return method == "PUT"


S3_FAULTS = {
    "S3 500 InternalError, every 3rd request": Fault("status", status=500, every=3),
    "S3 503 SlowDown, every 2nd request": Fault("status", status=503, every=2),
    "S3 503 SlowDown on every PUT (outage)": Fault("status", status=503, match=is_put),
    "S3 reset mid-request body, every 3rd PUT": Fault("reset-request", every=3, match=is_put),
    "S3 reset mid-response body, every 3rd request": Fault("reset-response", every=3),
    "S3 delay beyond the read timeout, every 4th": Fault("delay", every=4, delay=4.0),
    "S3 body corrupted in transit, every 2nd PUT": Fault("corrupt-body", every=2, match=is_put),
}
RESOLVER_FAULTS = {
    "resolver 503, every request (outage)": Fault("status", status=503),
    "resolver 500, every 2nd request": Fault("status", status=500, every=2),
    "resolver reset mid-response, every 2nd": Fault("reset-response", every=2),
    "resolver delay beyond the timeout, every 2nd": Fault("delay", every=2, delay=3.0),
    "resolver malformed JSON, every 2nd": Fault("malformed-json", every=2),
    "resolver wrong content type, every 2nd": Fault("wrong-content-type", every=2),
    "resolver partial items list, every 2nd": Fault("partial-items", every=2),
}


def expected_by_prefix(clinic) -> dict[str, dict]:
    return {
        f"images/{e['patient_guid']}/{clinic.clinic_id}_{e['image_id']}_": e
        for e in clinic.expected
    }


@pytest.mark.parametrize("name", list(S3_FAULTS) + list(RESOLVER_FAULTS))
def test_fault(name, make_site, seaweed, tmp_path):
    fault = S3_FAULTS.get(name) or RESOLVER_FAULTS[name]
    on_s3 = name in S3_FAULTS

    with ExitStack() as stack:
        s3_proxy = stack.enter_context(FaultProxy(seaweed.endpoint, "s3"))
        site = make_site(
            endpoint=s3_proxy.url,
            transfer={"max_attempts": 4, "read_timeout_seconds": 2, "connect_timeout_seconds": 2},
            patients=12,
            images_per_patient=(1, 2),
        )
        clinic, client = site.clinic, site.client
        pdata = Path(clinic.pdata_root)
        expected = expected_by_prefix(clinic)
        resolver_proxy = stack.enter_context(FaultProxy(site.resolver.url, "resolver"))
        config = site.variant(
            "faults",
            resolver={
                "url": resolver_proxy.url,
                "batch_size": 4,
                "timeout_seconds": 1.5,
                "max_attempts": 4,
                "cache_ttl_hours": 0,
            },
        )

        def sync():
            return site.sync(config=config)

        (s3_proxy if on_s3 else resolver_proxy).set(fault)
        code, summary = sync()
        fired = (s3_proxy if on_s3 else resolver_proxy).state.faults_fired
        assert fired > 0, "the fault never fired"
        (s3_proxy if on_s3 else resolver_proxy).clear()

        # with the fault: every expected object is there and intact, or its file is in failed
        stored = stored_objects(client)
        failed_paths = {f["path"] for f in summary["failed"]}
        assert all(f["reason"] for f in summary["failed"])
        assert (code == 1) == bool(summary["failed"])
        catalog = Catalog.open(default_catalog_url(tmp_path / "state"))
        images = catalog.images(clinic.clinic_id, destination_of(s3_proxy.url, BUCKET))
        rows = images.rows()
        for path in failed_paths if on_s3 else ():  # a key S3 did not confirm: not verified
            assert not all(r.state == VERIFIED for r in rows if r.rel_path == path), path
        for row in rows:  # what is verified is in S3, byte-identical
            if row.state == VERIFIED:
                assert stored[row.key] == (pdata / row.rel_path).read_bytes(), row.key
        corrupted_during = 0
        for prefix, entry in expected.items():
            keys = [k for k in stored if k.startswith(prefix)]
            if keys:
                corrupted_during += stored[keys[0]] != (pdata / entry["path"]).read_bytes()
            else:
                assert entry["path"] in failed_paths, f"{entry['path']} silently missing"
        runs = 1 if code == 0 else 2  # runs until S3 held everything
        if code != 0:
            code, summary = sync()  # the fault is gone: one more run
        assert code == 0 and summary["failed"] == [], summary["failed"]
        # converged: exactly the expected objects, byte-identical
        stored = stored_objects(client)
        lost = corrupted = 0
        for prefix, entry in expected.items():
            keys = [k for k in stored if k.startswith(prefix)]
            if not keys:
                lost += 1
            elif stored[keys[0]] != (pdata / entry["path"]).read_bytes():
                corrupted += 1
        unexpected = [k for k in stored if not any(k.startswith(p) for p in expected)]
        assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
        rows = images.rows()
        assert len(rows) == len(expected) and all(r.state == VERIFIED for r in rows)
        catalog.close()

    assert lost == 0 and corrupted == 0 and corrupted_during == 0 and unexpected == []
    # only a row whose checks passed goes under the table's "nothing lost" heading
    record_fault_row((name, fired, runs, lost, corrupted + corrupted_during, len(unexpected)))
