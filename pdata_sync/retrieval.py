"""Retrieval of a patient's images by patientGuid alone (docs/product-rules.md §4).

Never reads PDATA, the Sidexis database or the resolver: only ``images/{patientGuid}/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .config import S3Config
from .errors import InvalidRequestError
from .keys import (
    is_canonical_guid,
    parse_key,
    patient_prefix,
    thumbnail_key,
    thumbnail_prefix,
)
from .manifest import HeaderError, Instance, build_manifest, missing_for_viewer, read_header
from .s3_store import RemoteObject, download, get_range, iter_prefix, list_prefix, presign_get

_SAFE_FILE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
DEFAULT_PRESIGN_SECONDS = 3600
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # S3's own limit for SigV4 presigned URLs


def validate_guid(patient_guid: object) -> str:
    """``patient_guid`` if it is a canonical UUID, else :class:`InvalidRequestError`."""
    if not is_canonical_guid(patient_guid):
        raise InvalidRequestError(
            "patient GUID refused: expected a lower-case UUID like "
            "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
        )
    return str(patient_guid)


def validate_expiry(seconds: object) -> int:
    """A presigned URL's lifetime in seconds: 1 to 7 days, else :class:`InvalidRequestError`."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise InvalidRequestError("presign: the expiry must be a whole number of seconds >= 1")
    if seconds > MAX_PRESIGN_SECONDS:
        raise InvalidRequestError(
            f"presign: {seconds} s is more than the maximum of {MAX_PRESIGN_SECONDS} s (7 days)"
        )
    return seconds


def download_name(key: str, prefix: str, used: set[str]) -> str:
    """A file name for ``key`` inside the download folder, unique among ``used`` (case-
    folded, for case-insensitive file systems; the name is added): the key's last segment,
    or on a collision its path below the prefix, then a numbered suffix. Never a name that
    escapes the folder."""
    relative = key[len(prefix) :] if key.startswith(prefix) else key
    candidates = [relative.rsplit("/", 1)[-1], relative.replace("/", "__")]
    safe = [c for c in candidates if _SAFE_FILE.fullmatch(c) and set(c) != {"."}]
    if not safe:  # an object someone else wrote under the prefix
        safe = ["object-" + hashlib.sha256(key.encode()).hexdigest()[:16]]
    name = next((c for c in safe if c.casefold() not in used), None)
    if name is None:
        stem, dot, ext = safe[0].rpartition(".")
        stem, ext = (stem, f".{ext}") if dot else (safe[0], "")
        n = 2
        while f"{stem}-{n}{ext}".casefold() in used:
            n += 1
        name = f"{stem}-{n}{ext}"
    used.add(name.casefold())
    return name


def list_patient_images(
    client: Any,
    s3: S3Config,
    patient_guid: str,
    *,
    presign_seconds: int | None = None,
    download_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """List every object under ``images/{patientGuid}/``; optionally presign and download.

    The GUID and expiry are validated before S3 is called.
    """
    guid = validate_guid(patient_guid)
    if presign_seconds is not None:
        validate_expiry(presign_seconds)
    target = Path(download_dir) if download_dir is not None else None
    used: set[str] = set()  # file names taken in this download, case-folded
    results = []
    for obj in iter_prefix(client, s3.bucket, patient_prefix(guid)):
        fields = parse_key(obj.key, s3.key_template) or {}
        entry: dict[str, Any] = {
            "key": obj.key,
            "clinic_id": fields.get("clinic_id"),
            "image_id": fields.get("image_id"),
            "name": fields.get("name"),
            "size": obj.size,
            "last_modified": obj.last_modified.isoformat(),
        }
        if presign_seconds is not None:
            entry["url"] = presign_get(client, s3.bucket, obj.key, presign_seconds)
        if target is not None:
            name = download_name(obj.key, patient_prefix(guid), used)
            entry["path"] = str(download(client, s3.bucket, obj.key, target / name))
        results.append(entry)
    return results


HEADER_READERS = 8  # concurrent ranged GETs while building a manifest


def patient_manifest(
    client: Any, s3: S3Config, patient_guid: str, presign_seconds: int = DEFAULT_PRESIGN_SECONDS
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """OHIF's DICOM JSON manifest for a patient, from S3 alone, and the objects left out
    (``{"key", "reason"}``: not DICOM, header unreadable). Every URL is presigned for
    ``presign_seconds``; an image's thumbnail URL is added where the thumbnail exists."""
    guid = validate_guid(patient_guid)
    validate_expiry(presign_seconds)
    objects = list(iter_prefix(client, s3.bucket, patient_prefix(guid)))
    thumbnails = list_prefix(client, s3.bucket, thumbnail_prefix(guid))

    def header_of(obj: RemoteObject) -> Instance | dict[str, str]:
        try:
            header = read_header(lambda n: get_range(client, s3.bucket, obj.key, n))
        except HeaderError as exc:
            return {"key": obj.key, "reason": str(exc)}
        missing = missing_for_viewer(header)
        if missing:
            return {"key": obj.key, "reason": f"no {', '.join(missing)}: the viewer cannot draw it"}
        thumb = thumbnail_key(obj.key)
        return Instance(
            key=obj.key,
            header=header,
            url=presign_get(client, s3.bucket, obj.key, presign_seconds),
            thumbnail_url=presign_get(client, s3.bucket, thumb, presign_seconds)
            if thumb in thumbnails
            else None,
        )

    with ThreadPoolExecutor(HEADER_READERS) as pool:
        results = list(pool.map(header_of, objects))
    items = [r for r in results if isinstance(r, Instance)]
    left_out = [r for r in results if isinstance(r, dict)]
    return build_manifest(items, guid), left_out


def write_private(path: str | Path, data: bytes) -> Path:
    """Write ``data`` readable by its owner only (presigned URLs, previews: patient data),
    atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)
    return target


def write_private_json(path: str | Path, document: Any) -> Path:
    """Write JSON readable by its owner only (it holds presigned URLs), atomically."""
    return write_private(path, json.dumps(document, indent=1).encode("utf-8"))
