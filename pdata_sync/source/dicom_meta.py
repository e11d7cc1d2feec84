"""DICOM header (read without pixel data) and content hashes of image files."""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pdata_sync.base.errors import BadInputError
from pdata_sync.source.dicom_scan import LONG_VRS, MEDIA_SOP, scan

UNKNOWN = "unknown"  # some S3 servers drop empty metadata values, so absent fields say this
_HASH_CHUNK = 1024 * 1024
# How much of a file the lean scan reads; a longer header is read by pydicom.
_SCAN_BYTES = 64 * 1024
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
    "PatientID",
    "PatientBirthDate",
]


@dataclass(frozen=True)
class HeaderDates:
    """The header's own dates as written (DICOM DA text; None when absent), what the
    retention rule reads (pdata_sync.archive.retention). The birth date is never logged,
    stored or put in metadata, hence no repr."""

    study: str | None = None
    acquisition: str | None = None
    content: str | None = None
    birth: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DicomHeader:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str
    acquisition_date: str  # YYYYMMDD as in DICOM, or "unknown"
    # what is wrong with a file that is still archived byte for byte (e.g. pixel data cut
    # short): reported in the run's notes and kept on the catalog row; None when intact
    defect: str | None = None
    # the file's own PatientID (None: absent), compared with its folder's patient
    # (pdata_sync.identity.rules); never logged, stored or put in metadata, hence no repr
    patient_id: str | None = field(default=None, repr=False)
    # the examination and birth dates, one by one (retention); never logged, hence no repr
    dates: HeaderDates = field(default_factory=HeaderDates, repr=False)


def _text(get: Callable[[str], Any], *keywords: str) -> str:
    """The first of ``keywords`` whose value (``get(keyword)``) is usable ASCII text."""
    for kw in keywords:
        value = get(kw)
        if value not in (None, ""):
            text = str(value).strip()
            if text and text.isascii():
                return text
    return UNKNOWN


def _header(
    get: Callable[[str], Any], get_meta: Callable[[str], Any], defect: str | None
) -> DicomHeader:
    """The catalog's fields from the data set's elements (``get``) and the file meta's."""
    sop = _text(get, "SOPInstanceUID")
    if sop == UNKNOWN:
        sop = _text(get_meta, MEDIA_SOP)
    return DicomHeader(
        study_instance_uid=_text(get, "StudyInstanceUID"),
        series_instance_uid=_text(get, "SeriesInstanceUID"),
        sop_instance_uid=sop,
        modality=_text(get, "Modality"),
        acquisition_date=_text(get, "AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate"),
        defect=defect,
        patient_id=_patient_id(get("PatientID")),
        dates=HeaderDates(
            study=_raw(get("StudyDate")),
            acquisition=_raw(get("AcquisitionDate")),
            content=_raw(get("ContentDate")),
            birth=_raw(get("PatientBirthDate")),
        ),
    )


def _raw(value: Any) -> str | None:
    """A date element's text as written (None when absent or empty)."""
    if value in (None, ""):
        return None
    return str(value).strip() or None


def _patient_id(value: Any) -> str | None:
    """The PatientID as text (None when the element is absent; "" when empty)."""
    if value is None:
        return None
    return str(value).strip()


def read_header(source: bytes | str | Path | BinaryIO) -> DicomHeader:
    """Parse the DICOM header of ``source`` (bytes, a path or a binary file).

    Raises :class:`BadInputError` for an empty file or anything that is not DICOM Part 10.
    The plain cases are read by :func:`dicom_scan.scan`; pydicom reads the rest, and is the
    reference the scan is tested against.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            return read_header(fh)
    if isinstance(source, bytes):
        if not source:
            raise BadInputError("empty file")
        return _from_scan(source, io.BytesIO(source), whole=True) or _read_with_pydicom(
            io.BytesIO(source)
        )
    start = source.tell()
    head = source.read(_SCAN_BYTES)
    header = _from_scan(head, source, whole=len(head) < _SCAN_BYTES, base=start)
    if header is not None:
        return header
    source.seek(start)
    return _read_with_pydicom(source)


def _from_scan(data: bytes, fp: BinaryIO, *, whole: bool, base: int = 0) -> DicomHeader | None:
    """The header from a lean scan of ``data`` (the start of ``fp``, at ``base``), or None
    when pydicom must read it. ``whole``: ``data`` is all of the file."""
    found = scan(data)
    if found is None or found.values["SOPInstanceUID"] is None:
        return None  # pydicom reads it (and says what is wrong, if anything)
    if found.pixel_offset is None and not whole:
        return None  # the header may go on past what was read
    if found.pixel_offset is None:
        defect = None
    else:
        fp.seek(base + found.pixel_offset)
        defect = pixel_data_defect(fp, found.implicit_vr, True)
    return _header(found.values.get, found.values.get, defect)


def _read_with_pydicom(fp: BinaryIO) -> DicomHeader:
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False, specific_tags=_HEADER_TAGS)
        implicit, little = getattr(ds, "original_encoding", (False, True))
        defect = pixel_data_defect(fp, implicit is True, little is not False)
    except InvalidDicomError:
        raise BadInputError("not a DICOM file (no DICM header)") from None
    except (
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        OverflowError,
        NotImplementedError,
        struct.error,
        BytesLengthException,  # a value cut short (a RuntimeError, not a ValueError)
    ) as exc:
        # pydicom raises these on truncated or garbled headers
        raise BadInputError(f"damaged DICOM header: {type(exc).__name__}") from None
    except OSError as exc:
        if exc.errno is not None:
            raise  # the share could not be read: not the file's fault
        # pydicom's own "No tag to read at file position ...": a sequence cut short
        raise BadInputError(f"damaged DICOM header: {type(exc).__name__}") from None
    if "SOPInstanceUID" not in ds and "SOPInstanceUID" not in getattr(ds, "file_meta", {}):
        raise BadInputError("DICOM file without a SOP Instance UID")
    return _header(ds.get, ds.file_meta.get, defect)


_PIXEL_DATA = (0x7FE0, 0x0010)
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0, little endian
_TAIL = 1024


def pixel_data_defect(fp: BinaryIO, implicit_vr: bool, little_endian: bool) -> str | None:
    """Whether the pixel data that starts at ``fp``'s position (where a header read that
    stopped before the pixels left it) is shorter than its element declares. None when
    intact or when there is no pixel data element. Reads a few bytes at the element and
    the file's tail, never the pixels."""
    start = fp.tell()
    head = fp.read(8)
    if not head:
        return None
    if len(head) < 8:
        return "pixel data cut short: its element header is incomplete"
    order = "<" if little_endian else ">"
    if struct.unpack(order + "HH", head[:4]) != _PIXEL_DATA:
        return None
    if implicit_vr:
        length, value_start = struct.unpack(order + "L", head[4:8])[0], start + 8
    elif head[4:6] in LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return "pixel data cut short: its element header is incomplete"
        length, value_start = struct.unpack(order + "L", more)[0], start + 12
    else:
        length, value_start = struct.unpack(order + "H", head[6:8])[0], start + 8
    end = fp.seek(0, io.SEEK_END)
    if length == 0xFFFFFFFF:  # encapsulated (compressed) frames end with a sequence delimiter
        fp.seek(max(value_start, end - _TAIL))
        if _SEQUENCE_END not in fp.read():
            return "pixel data cut short: the compressed frames have no end marker"
        return None
    present = end - value_start
    if present < length:
        return f"pixel data cut short: {present:,} of {length:,} bytes"
    return None


def multipart_etag(md5_digests: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: md5 of the part md5s, dash, part count."""
    return f"{hashlib.md5(b''.join(md5_digests)).hexdigest()}-{len(md5_digests)}"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MB pieces (hashlib releases the GIL for each)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
