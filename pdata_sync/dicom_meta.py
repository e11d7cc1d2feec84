"""DICOM header (read without pixel data) and content hashes of image files."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import BadInputError

UNKNOWN = "unknown"  # some S3 servers drop empty metadata values, so absent fields say this
_HASH_CHUNK = 1024 * 1024
# The elements a header read needs; pydicom converts only these (a real header has hundreds).
_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "AcquisitionDate",
    "ContentDate",
    "SeriesDate",
    "StudyDate",
]


@dataclass(frozen=True)
class DicomHeader:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str
    acquisition_date: str  # YYYYMMDD as in DICOM, or "unknown"


if TYPE_CHECKING:  # pydicom is imported when a header is read: a no-change run never does
    import pydicom


def _text(ds: pydicom.Dataset | Any, *keywords: str) -> str:
    for kw in keywords:
        value = ds.get(kw)
        if value not in (None, ""):
            text = str(value).strip()
            if text and text.isascii():
                return text
    return UNKNOWN


def read_header(source: bytes | str | Path | BinaryIO) -> DicomHeader:
    """Parse the DICOM header of ``source`` (bytes, a path or a binary file).

    Raises :class:`BadInputError` for an empty file or anything that is not DICOM Part 10.
    """
    if isinstance(source, bytes):
        if not source:
            raise BadInputError("empty file")
        fp: BinaryIO | str | Path = io.BytesIO(source)
    else:
        fp = source
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        raise BadInputError("not a DICOM file (no DICM header)") from None
    except (EOFError, ValueError, KeyError, TypeError, OverflowError, NotImplementedError) as exc:
        # pydicom raises these on truncated or garbled headers
        raise BadInputError(f"damaged DICOM header: {type(exc).__name__}") from None
    if "SOPInstanceUID" not in ds and "SOPInstanceUID" not in getattr(ds, "file_meta", {}):
        raise BadInputError("DICOM file without a SOP Instance UID")
    sop = _text(ds, "SOPInstanceUID")
    if sop == UNKNOWN:
        sop = _text(ds.file_meta, "MediaStorageSOPInstanceUID")
    return DicomHeader(
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=sop,
        modality=_text(ds, "Modality"),
        acquisition_date=_text(ds, "AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate"),
    )


def multipart_etag(md5_digests: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: md5 of the part md5s, dash, part count."""
    return f"{hashlib.md5(b''.join(md5_digests)).hexdigest()}-{len(md5_digests)}"


def file_digests(path: str | Path, size: int, threshold: int, part_size: int) -> tuple[str, str]:
    """``(etag, sha256_hex)`` of ``path`` in one streaming read.

    The ETag is the one S3 reports if pdata-sync uploaded the file with these sizes: files up
    to ``threshold`` go up in one PUT (ETag = md5 of the content); larger ones in parts of
    ``part_size`` (ETag = :func:`multipart_etag`).
    """
    whole_sha = hashlib.sha256()
    whole_md5 = hashlib.md5()
    part_md5s: list[bytes] = []
    part = hashlib.md5()
    in_part = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            whole_sha.update(chunk)
            if size <= threshold:
                whole_md5.update(chunk)
                continue
            view = memoryview(chunk)
            while view:
                take = min(part_size - in_part, len(view))
                part.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == part_size:
                    part_md5s.append(part.digest())
                    part, in_part = hashlib.md5(), 0
    if size <= threshold:
        return whole_md5.hexdigest(), whole_sha.hexdigest()
    if in_part:
        part_md5s.append(part.digest())
    return multipart_etag(part_md5s), whole_sha.hexdigest()


def part_digests(path: str | Path, part_size: int) -> tuple[str, list[tuple[bytes, bytes]]]:
    """``(sha256_hex, [(md5, sha256) of each part])`` of ``path`` in one streaming read."""
    whole = hashlib.sha256()
    parts: list[tuple[bytes, bytes]] = []
    md5, sha, filled = hashlib.md5(), hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            whole.update(chunk)
            view = memoryview(chunk)
            while view:
                take = min(part_size - filled, len(view))
                md5.update(view[:take])
                sha.update(view[:take])
                filled += take
                view = view[take:]
                if filled == part_size:
                    parts.append((md5.digest(), sha.digest()))
                    md5, sha, filled = hashlib.md5(), hashlib.sha256(), 0
    if filled:
        parts.append((md5.digest(), sha.digest()))
    return whole.hexdigest(), parts
