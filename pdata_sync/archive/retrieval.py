"""Retrieval of a patient's images by patientGuid alone (docs/product-rules.md §4).

Never reads PDATA, the Sidexis database or the resolver: only ``images/{patientGuid}/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pdata_sync.archive.listing import RemoteObject, iter_prefix, list_prefix
from pdata_sync.archive.objects import download_into, get_range, presign_get
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import InvalidRequestError
from pdata_sync.base.local_files import UNCHANGED, NotReplaced, private_folder, write_new
from pdata_sync.identity.keys import (
    FALLBACK_NAME,
    decode_name_from_metadata,
    is_canonical_guid,
    parse_key,
    patient_prefix,
    thumbnail_key,
    thumbnail_prefix,
)
from pdata_sync.viewer.manifest import (
    HeaderError,
    Instance,
    build_manifest,
    missing_for_viewer,
    read_header,
)

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
    # never a hidden name (".bashrc" from an object someone put under the prefix)
    safe = [c for c in candidates if _SAFE_FILE.fullmatch(c) and not c.startswith(".")]
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
    target = private_folder(download_dir) if download_dir is not None else None
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
            entry.update(_download(client, s3.bucket, obj.key, target, guid, used))
        results.append(entry)
    return results


def _download(
    client: Any, bucket: str, key: str, folder: Path, guid: str, used: set[str]
) -> dict[str, str]:
    """Download one object into ``folder`` as a new owner-only file: ``{"path"}`` (and
    ``"download": "unchanged"`` when the same bytes were there), or ``{"download_problem"}``
    when it was not written (a name beginning with a dot, another file at its name)."""
    if key.rsplit("/", 1)[-1].startswith("."):
        return {"download_problem": "its name begins with a dot: not downloaded"}
    name = download_name(key, patient_prefix(guid), used)
    try:
        done = write_new(folder / name, lambda fh: download_into(client, bucket, key, fh))
    except NotReplaced as exc:
        return {"download_problem": str(exc)}
    entry = {"path": str(folder / name)}
    if done == UNCHANGED:
        entry["download"] = UNCHANGED
    return entry


HEADER_READERS = 8  # concurrent ranged GETs while building a manifest


def shown_name(encoded: str | None) -> str | None:
    """The Sidexis image name an object carries (``image-name``), for a viewer to label it;
    None when it has none (the fallback ``unnamed``) or it is not printable text."""
    if not encoded:
        return None
    name = decode_name_from_metadata(encoded).strip()
    if not name or name == FALLBACK_NAME or not name.isprintable():
        return None
    return name[:64]  # DICOM's LO limit for SeriesDescription


def _image_id(key: str, metadata: dict[str, str], template: str) -> int | None:
    fields = parse_key(key, template) or {}
    value = fields.get("image_id", metadata.get("image-id"))
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


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
        metadata: dict[str, str] = {}
        try:
            header = read_header(lambda n: get_range(client, s3.bucket, obj.key, n, metadata))
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
            name=shown_name(metadata.get("image-name")),
            image_id=_image_id(obj.key, metadata, s3.key_template),
        )

    with ThreadPoolExecutor(HEADER_READERS) as pool:
        results = list(pool.map(header_of, objects))
    items = [r for r in results if isinstance(r, Instance)]
    left_out = [r for r in results if isinstance(r, dict)]
    return build_manifest(items, guid), left_out


def write_manifest_file(path: str | Path, document: Any) -> Path:
    """Write a viewer manifest (it holds presigned URLs) as a new owner-only file
    (:func:`pdata_sync.base.local_files.write_new`); a different file already at ``path`` is
    not replaced but refused."""
    target = Path(path)
    try:
        write_new(target, json.dumps(document, indent=1).encode("utf-8"))
    except NotReplaced:
        raise InvalidRequestError(
            f"viewer manifest: {target} exists: it is not replaced (remove it, or choose "
            "another file)"
        ) from None
    return target
