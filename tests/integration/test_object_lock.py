"""Retention no one can shorten (``s3.object_lock``), through the CLI on SeaweedFS 4.48, which
enforces Object Lock (tests/integration/test_object_lock_server.py measures it): every image
version and its thumbnail is locked until the retention rule's date, a minor's longer; the
worker's own credentials cannot delete a locked version; retirement and a drift repair on the
locked bucket work and leave the locked versions; a bucket without Object Lock is refused.

Each test makes a bucket of its own: locked versions outlive the test (until the session's
SeaweedFS is stopped and its folder removed), so no test shares them."""

from __future__ import annotations

import json
import sqlite3
import stat
import uuid
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from botocore.exceptions import ClientError

from pdata_sync.archive.retrieval import list_patient_images, patient_manifest
from pdata_sync.base.config import load_config
from pdata_sync.catalog import INVENTORY_COLUMNS
from tests.conftest import run_cli

LOCK = {"mode": "COMPLIANCE", "years": 10, "minors_until_age": 28}


def locked_bucket(client) -> str:
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


def rewrite(path: Path, **elements: str | None) -> None:
    """Set (or, with None, remove) header elements of a clinic's file."""
    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def keys_under(client, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def retention(client, bucket: str, key: str, version: str | None = None) -> tuple[str, datetime]:
    extra = {"VersionId": version} if version else {}
    held = client.get_object_retention(Bucket=bucket, Key=key, **extra)["Retention"]
    return held["Mode"], held["RetainUntilDate"].astimezone(UTC)


def unlocked(client, bucket: str, key: str) -> bool:
    try:
        client.get_object_retention(Bucket=bucket, Key=key)
    except ClientError:
        return True
    return False


def run_artifact(site, flow_run_id: str, name: str) -> list[dict]:
    """The rows of a run's table artifact ``{name}-{clinic}``, read from the Prefect server."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    api = site.request.getfixturevalue("prefect_server").api_url
    with SyncPrefectClient(api) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    (table,) = [a.data for a in found if a.key == f"{name}-{site.clinic.clinic_id}"]
    return json.loads(table) if isinstance(table, str) else table


def unheld(client, bucket: str, key: str) -> bool:
    try:
        status = client.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"]
    except ClientError:
        return True  # never held
    return status == "OFF"


def key_of(keys: list[str], clinic_id: str, entry: dict) -> str:
    prefix = f"images/{entry['patient_guid']}/{clinic_id}_{entry['image_id']}_"
    (key,) = [k for k in keys if k.startswith(prefix)]
    return key


def end_of(day: date) -> datetime:
    """A lock through the whole of ``day``: to the start of the next day, UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def test_every_version_is_locked_until_the_rule_date_and_survives_retirement_and_drift(
    make_site,
):
    site = make_site()
    client = site.client
    bucket = locked_bucket(client)
    clinic = site.clinic
    config = site.variant("locked", s3={"bucket": bucket, "object_lock": LOCK})
    entries = sorted(clinic.expected, key=lambda e: e["image_id"])
    # files archived once (a special case archives one file under two patientGuids)
    once = [e for e in entries if [x["path"] for x in entries].count(e["path"]) == 1]
    adult, minor, undated, gone, drifts = once[:5]
    rewrite(Path(clinic.pdata_root, adult["path"]), StudyDate="20200615",
            PatientBirthDate="19700101")  # fmt: skip
    rewrite(Path(clinic.pdata_root, minor["path"]), StudyDate="20200615",
            PatientBirthDate="20100301")  # fmt: skip
    rewrite(Path(clinic.pdata_root, undated["path"]), StudyDate=None, AcquisitionDate=None,
            ContentDate=None, PatientBirthDate="19700101")  # fmt: skip
    for entry in (gone, drifts):  # examined recently enough to be locked
        rewrite(Path(clinic.pdata_root, entry["path"]), StudyDate="20240101")

    code, summary = site.sync(config=config)
    assert code == 0, summary["failed"]
    today = datetime.now(UTC).date()
    images = keys_under(client, bucket, "images/")
    assert len(images) == len(clinic.expected)
    with closing(sqlite3.connect(site.tmp_path / "state" / "catalog.sqlite")) as db:
        kept = dict(db.execute("SELECT key, retain_until FROM images"))
    # an examination more than 10 years ago (the generated ones go back to 2015) has no
    # period left: stored without a lock, and said so; every other version is locked
    ended = {n["path"] for n in summary["notes"] if "retention period has ended" in n["reason"]}
    by_path = {e["path"]: key_of(images, clinic.clinic_id, e) for e in once}
    ended_keys = {k for e in entries if e["path"] in ended
                  for k in [key_of(images, clinic.clinic_id, e)]}  # fmt: skip
    assert {k for k in images if unlocked(client, bucket, k)} == ended_keys
    for key in set(images) - ended_keys:
        mode, until = retention(client, bucket, key)
        assert mode == "COMPLIANCE" and until == end_of(date.fromisoformat(kept[key])), key
        # its thumbnail is kept as long as the image
        thumb = "thumbnails/" + key.removeprefix("images/").rsplit(".", 1)[0] + ".jpg"
        assert retention(client, bucket, thumb) == (mode, until), thumb
    assert retention(client, bucket, by_path[adult["path"]])[1] == end_of(date(2030, 6, 15))
    # a minor at the examination: until the 28th birthday, later than 10 years after it
    assert retention(client, bucket, by_path[minor["path"]])[1] == end_of(date(2038, 3, 1))
    assert retention(client, bucket, by_path[undated["path"]])[1] in {
        end_of(day.replace(year=day.year + 10)) for day in (today, today - timedelta(days=1))
    }
    assert [n["path"] for n in summary["notes"] if "upload date" in n["reason"]] == [
        undated["path"]
    ]
    assert {k for k, v in kept.items() if v is None} == ended_keys

    # the inventory carries the date beside each image, and nothing that names a person
    out = site.tmp_path / "inventory.parquet"
    code, answer = site.cli("inventory", "--out", str(out), config=config)
    assert code == 0 and answer["rows"] == len(images), answer
    table = pq.read_table(out)
    assert tuple(table.column_names) == INVENTORY_COLUMNS
    inventory = {r["key"]: r for r in table.to_pylist()}
    assert {k: r["retain_until"] for k, r in inventory.items()} == {
        k: None if v is None else date.fromisoformat(v) for k, v in kept.items()
    }
    assert {r["state"] for r in inventory.values()} == {"verified"}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    # a legal hold on one patient: every version of their images and thumbnails, recorded
    guid = adult["patient_guid"]
    code, held = site.cli("hold", "--patient-guid", guid, config=config)
    assert code == 0 and held["status"] == "ON" and held["failed"] == [], held
    patient_keys = [k for k in images if k.startswith(f"images/{guid}/")]
    assert held["images"] == sorted(patient_keys)
    thumbs = ["thumbnails/" + k.removeprefix("images/").rsplit(".", 1)[0] + ".jpg"
              for k in patient_keys]  # fmt: skip
    assert held["versions"] == len(patient_keys) + len(thumbs)
    for key in patient_keys + thumbs:
        assert client.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"] == "ON"
    others = [k for k in images if not k.startswith(f"images/{guid}/")]
    assert unheld(client, bucket, others[0])
    code, cleared = site.cli("hold", "--patient-guid", guid, "--off", config=config)
    assert code == 0 and cleared["versions"] == held["versions"], cleared
    assert all(unheld(client, bucket, k) for k in patient_keys + thumbs)
    with closing(sqlite3.connect(site.tmp_path / "state" / "catalog.sqlite")) as db:
        events = db.execute(
            "SELECT key, transition FROM image_events WHERE transition LIKE 'legal_hold_%'"
        ).fetchall()
    assert sorted(events) == sorted(
        [(k, "legal_hold_on") for k in patient_keys] + [(k, "legal_hold_off") for k in patient_keys]
    )

    # the worker's own credentials cannot destroy a locked version
    adult_key = key_of(images, clinic.clinic_id, adult)
    first = client.head_object(Bucket=bucket, Key=adult_key)["VersionId"]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=adult_key, VersionId=first)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # a file leaves the share, and someone rewrites another image in S3
    Path(clinic.pdata_root, gone["path"]).unlink()
    drift_key = key_of(images, clinic.clinic_id, drifts)
    locked_version = client.head_object(Bucket=bucket, Key=drift_key)["VersionId"]
    client.put_object(Bucket=bucket, Key=drift_key, Body=b"not an x-ray")
    code, report = site.verify(config=config)
    assert code == 1 and [c["key"] for c in report["changed"]] == [drift_key], report

    code, summary = site.sync(config=config)
    assert code == 0, summary["failed"]
    gone_key = key_of(images, clinic.clinic_id, gone)
    assert [r["key"] for r in summary["retired"]] == [gone_key]
    # retired: out of images/ (a delete marker), its locked version still there, and the
    # copy under retired/ locked until the same date
    assert gone_key not in keys_under(client, bucket, "images/")
    versions = client.list_object_versions(Bucket=bucket, Prefix=gone_key)
    assert [m["IsLatest"] for m in versions.get("DeleteMarkers", [])] == [True]
    (old,) = versions["Versions"]
    copy = next(k for k in keys_under(client, bucket, "retired/") if k.endswith(gone_key))
    assert retention(client, bucket, copy) == retention(client, bucket, gone_key, old["VersionId"])
    # retrieval and the viewer's manifest read current versions only: the retired image is
    # gone for them, its patient's other images are there, each once
    s3 = load_config(config).s3
    listed = [i["key"] for i in list_patient_images(client, s3, gone["patient_guid"])]
    assert gone_key not in listed and len(listed) == len(set(listed))
    assert listed == [k for k in images if k.startswith(f"images/{gone['patient_guid']}/")
                      and k != gone_key]  # fmt: skip
    manifest, left_out = patient_manifest(client, s3, gone["patient_guid"])
    urls = json.dumps(manifest)
    assert left_out == [] and gone_key not in urls and all(k in urls for k in listed)

    # the run's record in the UI: what it changed and why, by image id, no names
    changes = {r["key"]: r for r in run_artifact(site, summary["flow_run_id"], "sync-changes")}
    assert changes[gone_key]["change"] == "retired"
    assert changes[gone_key]["reason"] == "the file is gone from PDATA"
    assert changes[drift_key]["change"] == "re-uploaded"
    assert changes[drift_key]["image_id"] == drifts["image_id"]
    assert {c["change"] for c in changes.values()} == {"retired", "re-uploaded"}

    # the audit tells the retirement, from the catalog, by key and by the run that did it
    code, audit = site.cli("audit", "--key", gone_key, config=config)
    assert code == 0, audit
    assert [e["transition"] for e in audit["events"]][-1] == "retire"
    assert audit["events"][-1]["detail"] == f"{copy} (the file is gone from PDATA)"
    code, by_run = site.cli("audit", "--flow-run", summary["flow_run_id"], config=config)
    assert code == 0 and gone_key in {e["key"] for e in by_run["events"]}, by_run
    assert {e["flow_run_id"] for e in by_run["events"]} == {summary["flow_run_id"]}

    # drift repaired by a new locked version; the locked original and the stray one stay
    repaired = client.get_object(Bucket=bucket, Key=drift_key)
    assert repaired["Body"].read() == Path(clinic.pdata_root, drifts["path"]).read_bytes()
    assert repaired["ObjectLockMode"] == "COMPLIANCE"
    listed = client.list_object_versions(Bucket=bucket, Prefix=drift_key)["Versions"]
    assert len(listed) == 3 and locked_version in {v["VersionId"] for v in listed}
    code, report = site.verify(config=config)
    assert code == 0 and report["ok"], report


def test_a_bucket_without_object_lock_is_refused_before_any_upload(site):
    config = site.variant("unlocked", s3={"object_lock": LOCK})  # dental-images: no lock
    out = run_cli(["sync", "--config", str(config)], site.env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("pdata-sync: S3: bucket 'dental-images' has no Object Lock"), last
    # a refusal inside the run is its one line: not Prefect's tracebacks, nor its four
    # reports of the same error, nor its INFO lines (the run's log keeps them; -v shows them)
    assert out.stderr.strip().splitlines() == [last], out.stderr
    assert site.client.list_objects_v2(Bucket="dental-images").get("KeyCount", 0) == 0
    # nor can a legal hold be set there
    guid = site.clinic.expected[0]["patient_guid"]
    out = run_cli(["hold", "--config", str(config), "--patient-guid", guid], site.env)
    assert out.returncode == 2 and "has no Object Lock" in out.stderr.splitlines()[-1]
