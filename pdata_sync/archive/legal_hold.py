"""Legal hold: a patient's objects kept whatever their retention date, until the hold is
cleared (a dispute, an inquiry). S3 sets it per object *version*, so every version of the
patient's images, thumbnails and retired copies in this clinic gets it, current or not: a
hold that missed the version someone overwrote would hold the wrong bytes.

Only on a bucket with Object Lock (S3 refuses a hold elsewhere); the caller checks that
first. A hold never deletes or shortens anything, and clearing it leaves each version's
retention date as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pdata_sync.archive.retired import RETIRED_PREFIX
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import describe
from pdata_sync.identity.keys import parse_key, patient_prefix, thumbnail_key, thumbnail_prefix

ON, OFF = "ON", "OFF"


@dataclass
class HoldReport:
    patient_guid: str
    status: str  # ON or OFF, as asked
    versions: int = 0  # versions set
    images: list[str] = field(default_factory=list)  # the patient's image keys (any version)
    failed: list[dict[str, str]] = field(default_factory=list)  # key, version, reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_guid": self.patient_guid,
            "status": self.status,
            "versions": self.versions,
            "images": sorted(self.images),
            "failed": sorted(self.failed, key=lambda f: (f["key"], f["version"])),
        }


def _versions(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(key, version id) of every version under ``prefix``; delete markers have no bytes to
    hold and are left out."""
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for version in page.get("Versions", []) or []:
            yield version["Key"], str(version.get("VersionId") or "null")


def patient_versions(
    client: Any, s3: S3Config, clinic_id: str, patient_guid: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """Every version of the patient's objects in this clinic (images, their thumbnails and
    retired copies), and the image keys among them."""
    prefix = patient_prefix(patient_guid)
    ours: list[tuple[str, str]] = []
    image_keys: set[str] = set()
    for key, version in _versions(client, s3.bucket, prefix):
        fields = parse_key(key, s3.key_template)
        if fields is None or fields.get("clinic_id", clinic_id) != clinic_id:
            continue  # another clinic's image of the same patient: not this clinic's to hold
        ours.append((key, version))
        image_keys.add(key)
    thumbnails = {thumbnail_key(k) for k in image_keys}
    thumbs = thumbnail_prefix(patient_guid)
    ours += [(k, v) for k, v in _versions(client, s3.bucket, thumbs) if k in thumbnails]
    # a retired copy keeps its original key after retired/{clinic}/{time}/
    retired_root = f"{RETIRED_PREFIX}{clinic_id}/"
    for key, version in _versions(client, s3.bucket, retired_root):
        original = key[len(retired_root) :].split("/", 1)[-1]
        if original.startswith(prefix) and parse_key(original, s3.key_template) is not None:
            ours.append((key, version))
    return ours, sorted(image_keys)


def set_legal_hold(
    client: Any,
    s3: S3Config,
    clinic_id: str,
    patient_guid: str,
    *,
    on: bool,
    concurrency: int = 8,
) -> HoldReport:
    """Set (``on``) or clear the legal hold of every version of the patient's objects."""
    status = ON if on else OFF
    versions, images = patient_versions(client, s3, clinic_id, patient_guid)
    report = HoldReport(patient_guid=patient_guid, status=status, images=images)

    def one(item: tuple[str, str]) -> str | None:
        key, version = item
        try:
            client.put_object_legal_hold(
                Bucket=s3.bucket, Key=key, VersionId=version, LegalHold={"Status": status}
            )
        except Exception as exc:  # noqa: BLE001 - reported per version
            return describe(exc)
        return None

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for (key, version), problem in zip(versions, pool.map(one, versions), strict=True):
            if problem is None:
                report.versions += 1
            else:
                report.failed.append({"key": key, "version": version, "reason": problem})
    return report
