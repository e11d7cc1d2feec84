"""One PNG preview per image of a patient, for ``retrieve --previews DIR``.

With the clinic's Orthanc, a preview is Orthanc's own (``/instances/{id}/preview``): the
instance id follows from the object's header (:func:`pdata_sync.orthanc.client.instance_ids`), read
with a ranged GET, so no catalog is needed. An image Orthanc does not hold, or an Orthanc
that does not answer, falls back to the local renderer, the one that draws the thumbnails
(:mod:`pdata_sync.viewer.render`). Each result says where its preview came from. Files are
readable by their owner only: a preview is patient data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pdata_sync.archive.listing import iter_prefix
from pdata_sync.archive.objects import get_bytes, get_range
from pdata_sync.archive.retrieval import download_name, validate_guid
from pdata_sync.archive.thumbnails import too_large
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import describe
from pdata_sync.base.local_files import NotReplaced, private_folder, write_new
from pdata_sync.identity.keys import patient_prefix
from pdata_sync.orthanc.client import OrthancClient, instance_ids
from pdata_sync.viewer.manifest import HeaderError, read_header
from pdata_sync.viewer.render import RenderError, render

PREVIEW_MAX_SIDE = 1024  # local previews; Orthanc draws its own at full size
READERS = 8

FROM_ORTHANC = "orthanc"
FROM_LOCAL = "local"


def _orthanc_preview(client: Any, bucket: str, key: str, orthanc: OrthancClient) -> bytes | str:
    """Orthanc's PNG, or why there is none (the local renderer then draws it)."""
    try:
        ds = read_header(lambda n: get_range(client, bucket, key, n))
        tags = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        missing = [t for t in tags if not ds.get(t)]
        if missing:
            return f"not in Orthanc (Orthanc needs {', '.join(missing)})"
        ids = instance_ids(str(ds.get("PatientID", "") or ""), *(str(ds.get(t)) for t in tags))
        png = orthanc.preview(ids.instance_id)
    except HeaderError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - the local renderer is the fallback
        return f"Orthanc: {describe(exc)}"
    return png if png is not None else "not in Orthanc"


def write_previews(
    client: Any,
    s3: S3Config,
    patient_guid: str,
    target_dir: str | Path,
    orthanc: OrthancClient | None = None,
) -> list[dict[str, str]]:
    """Write ``{image}.png`` for every object under the patient's prefix; one entry per
    object: key, file (absent when none was written), source, and ``problem`` or
    ``fallback`` (why Orthanc's preview was not used)."""
    guid = validate_guid(patient_guid)
    target = private_folder(target_dir)
    objects = list(iter_prefix(client, s3.bucket, patient_prefix(guid)))
    used: set[str] = set()
    names = {}
    for obj in objects:
        stem = download_name(obj.key, patient_prefix(guid), used).removesuffix(".dcm")
        names[obj.key] = download_name(f"{stem}.png", "", used)

    def one(key: str, size: int) -> dict[str, str]:
        entry = {"key": key}
        if orthanc is not None:
            got = _orthanc_preview(client, s3.bucket, key, orthanc)
            if isinstance(got, bytes):
                return written(entry, got, FROM_ORTHANC)
            entry["fallback"] = got
        if reason := too_large(size):
            return {**entry, "source": FROM_LOCAL, "problem": reason}
        try:
            png = render(get_bytes(client, s3.bucket, key)[0], max_side=PREVIEW_MAX_SIDE, fmt="PNG")
        except RenderError as exc:
            return {**entry, "source": FROM_LOCAL, "problem": str(exc)}
        return written(entry, png, FROM_LOCAL)

    def written(entry: dict[str, str], png: bytes, source: str) -> dict[str, str]:
        path = target / names[entry["key"]]
        try:
            write_new(path, png)
        except NotReplaced as exc:
            return {**entry, "source": source, "problem": str(exc)}
        return {**entry, "file": str(path), "source": source}

    with ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(lambda o: one(o.key, o.size), objects))
