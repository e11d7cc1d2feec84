"""Thumbnails in S3: one JPEG per image under ``thumbnails/{patientGuid}/`` (docs/viewer.md).

A thumbnail is derived data: made by the sync right after its image is verified (when the
clinic's ``thumbnails`` switch is on), by :func:`backfill` for images archived before, and
deleted when its image is retired. A file that cannot be drawn is reported, never fatal: the
image itself is archived all the same. The thumbnail records the SHA-256 of the image content
it was drawn from (``source-sha256``), so a backfill can tell a stale one.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from pdata_sync.archive.listing import iter_prefix
from pdata_sync.archive.objects import get_bytes, put_derived, stored_lock
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import describe, s3_code
from pdata_sync.identity.keys import (
    THUMBNAILS_ROOT,
    parse_key,
    patient_prefix,
    thumbnail_key,
    thumbnail_prefix,
)

log = logging.getLogger(__name__)

# Larger images are not drawn by the sync (it would read them whole into memory a second
# time); a CBCT volume has no thumbnail. The backfill uses the same limit.
SOURCE_MAX_BYTES = 64 * 1024 * 1024
CONTENT_TYPE = "image/jpeg"


class ThumbnailError(Exception):
    """No thumbnail for this image; the message says why."""


def too_large(size: int) -> str | None:
    """Why an image of ``size`` bytes gets no thumbnail, or None when it may have one."""
    if size <= SOURCE_MAX_BYTES:
        return None
    mb = 1024 * 1024
    return (
        f"image of {size // mb} MB is larger than the {SOURCE_MAX_BYTES // mb} MB drawn "
        "for thumbnails"
    )


def make_thumbnail(
    client: Any,
    bucket: str,
    image_key: str,
    data: bytes,
    source_sha256: str | None,
    cpu: AbstractContextManager[Any] | None = None,
    lock: dict[str, Any] | None = None,
) -> str:
    """Draw ``data`` (the image at ``image_key``) and store its thumbnail; return its key.
    The drawing holds ``cpu`` (a slot of the run's CPU work), the upload does not.
    ``lock``: the image's Object Lock, which the thumbnail gets too.
    Raises :class:`ThumbnailError` (never anything else) when it cannot."""
    reason = too_large(len(data))
    if reason:
        raise ThumbnailError(reason)
    # imported here: numpy, Pillow and pydicom's pixel handlers cost about 0.3 s at start,
    # which a run that draws nothing (a no-change night) should not pay
    from pdata_sync.viewer.render import RenderError, render

    try:
        with cpu or nullcontext():
            jpeg = render(data)
    except RenderError as exc:
        raise ThumbnailError(f"thumbnail not made: {exc}") from None
    key = thumbnail_key(image_key)
    try:
        put_derived(client, bucket, key, jpeg, CONTENT_TYPE, source_sha256, lock)
    except Exception as exc:  # noqa: BLE001 - the image is archived; only this is missing
        raise ThumbnailError(f"thumbnail not stored: {describe(exc)}") from None
    return key


def delete_thumbnail(client: Any, bucket: str, image_key: str) -> None:
    """Delete an image's thumbnail, if it has one (deleting a missing key is no error)."""
    try:
        client.delete_object(Bucket=bucket, Key=thumbnail_key(image_key))
    except ClientError as exc:
        if s3_code(exc)[1] not in ("404", "NoSuchKey"):
            raise


@dataclass
class BackfillReport:
    images: int = 0
    made: int = 0
    present: int = 0  # already had a thumbnail
    not_made: list[dict[str, str]] = field(default_factory=list)  # key, reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "made": self.made,
            "present": self.present,
            "not_made": sorted(self.not_made, key=lambda e: e["key"]),
        }


def backfill(
    client: Any,
    s3: S3Config,
    clinic_id: str,
    patient_guid: str | None = None,
    *,
    redo: bool = False,
    concurrency: int = 8,
) -> BackfillReport:
    """Make the missing thumbnails of a clinic's images (one patient's with
    ``patient_guid``; every one again with ``redo``). Reads S3 only."""
    image_prefix = patient_prefix(patient_guid) if patient_guid else "images/"
    thumb_prefix = thumbnail_prefix(patient_guid) if patient_guid else THUMBNAILS_ROOT
    existing = {o.key for o in iter_prefix(client, s3.bucket, thumb_prefix)}
    mine = []
    for obj in iter_prefix(client, s3.bucket, image_prefix):
        fields = parse_key(obj.key, s3.key_template)
        if fields is None or fields.get("clinic_id", clinic_id) != clinic_id:
            continue  # another clinic's, or not an image key of ours
        mine.append(obj)
    report = BackfillReport(images=len(mine))
    todo = [o for o in mine if redo or thumbnail_key(o.key) not in existing]
    report.present = len(mine) - len(todo)

    def one(obj: Any) -> str | None:
        if reason := too_large(obj.size):
            return reason
        try:
            data, metadata = get_bytes(client, s3.bucket, obj.key)
            lock = stored_lock(client, s3.bucket, obj.key) if s3.object_lock else None
            make_thumbnail(client, s3.bucket, obj.key, data, metadata.get("sha256"), lock=lock)
        except ThumbnailError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - reported per image
            return f"image not read: {describe(exc)}"
        return None

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for obj, problem in zip(todo, pool.map(one, todo), strict=True):
            if problem is None:
                report.made += 1
            else:
                report.not_made.append({"key": obj.key, "reason": problem})
    return report
