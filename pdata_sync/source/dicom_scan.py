"""A lean walk over a DICOM Part 10 header for the few elements the catalog keeps.

pydicom stays the reference: :func:`scan` answers only for the plain cases (a DICM preamble,
a little-endian transfer syntax, the elements in the dictionary's VR, single values) and
returns None for anything else, so the caller reads the file with pydicom instead. Where it
answers, the answer is the one pydicom would give (tests/unit/test_dicom_scan.py compares
the two over pydicom's corpus and damaged variants of it). It exists because pydicom's
general machinery costs about 0.5 ms per file with the GIL held, which on a new worker's
first run (every file read and compared) was the largest single cost (docs/adr/0012).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_PREAMBLE = 128
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.100.1")
_PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}  # pydicom's stop_before_pixels
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 8  # sequences nested deeper than this go to pydicom

# The dataset elements read: keyword (pydicom's, the scan's answer is keyed by it) and the
# VR the DICOM dictionary gives them (pydicom decodes an element by the VR written in an
# explicit-VR file; another VR there goes to pydicom).
WANTED: dict[int, tuple[str, bytes]] = {
    0x00080018: ("SOPInstanceUID", b"UI"),
    0x00080020: ("StudyDate", b"DA"),
    0x00080021: ("SeriesDate", b"DA"),
    0x00080022: ("AcquisitionDate", b"DA"),
    0x00080023: ("ContentDate", b"DA"),
    0x00080060: ("Modality", b"CS"),
    0x00100020: ("PatientID", b"LO"),  # compared with the folder's patient, never kept
    0x00100030: ("PatientBirthDate", b"DA"),  # the retention rule's, never kept or logged
    0x0020000D: ("StudyInstanceUID", b"UI"),
    0x0020000E: ("SeriesInstanceUID", b"UI"),
}
_MEDIA_SOP_INSTANCE_UID = 0x00020003  # file meta: read too, the SOP UID's fallback
MEDIA_SOP = "MediaStorageSOPInstanceUID"
_TRANSFER_SYNTAX = 0x00020010
_VALID_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}  # fmt: skip


class _Decline(Exception):
    """Not a plain case: pydicom reads this file."""


@dataclass(frozen=True)
class Scan:
    """What the walk found: each wanted element's text (None when absent; "" when empty),
    the offset of the pixel data element (None when the header runs to the end of the
    data), and the dataset's encoding."""

    values: dict[str, str | None]  # by keyword
    pixel_offset: int | None
    implicit_vr: bool


def _text(raw: bytes) -> str:
    """The value as pydicom gives it for UI, CS, DA and an ASCII LO: trailing spaces and NULs
    removed; several values (a backslash) and bytes outside ASCII (pydicom decodes those by
    the file's character set) go to pydicom, whose text for them differs."""
    if not raw.isascii():
        raise _Decline
    value = raw.decode("ascii").rstrip(" \x00")
    if "\\" in value:
        raise _Decline
    return value


def _element(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """``(tag, vr, length, value offset)`` of the element at ``pos``."""
    if pos + 8 > len(data):
        raise _Decline
    group, elem = struct.unpack_from("<HH", data, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        return tag, None, struct.unpack_from("<L", data, pos + 4)[0], pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr not in _VALID_VRS:
        raise _Decline
    if vr in LONG_VRS:
        if pos + 12 > len(data):
            raise _Decline
        return tag, vr, struct.unpack_from("<L", data, pos + 8)[0], pos + 12
    return tag, vr, struct.unpack_from("<H", data, pos + 6)[0], pos + 8


def _skip_sequence(data: bytes, pos: int, implicit: bool, depth: int) -> int:
    """The offset after an undefined-length sequence whose items start at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _Decline
    while True:
        tag, _, length, pos = _element(data, pos, True)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Decline
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: its elements, then the item end
            tag, vr, length, pos = _element(data, pos, implicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                if not (vr == b"SQ" or (implicit and vr is None)):
                    raise _Decline
                pos = _skip_sequence(data, pos, implicit, depth + 1)
            else:
                pos += length


def scan(data: bytes) -> Scan | None:
    """Walk the header in ``data`` (the file, or at least its header) up to the pixel data.
    None when pydicom should read it instead, including when ``data`` ends inside an
    element (a truncated file, or a header longer than what was read)."""
    try:
        return _scan(data)
    except (_Decline, struct.error):
        return None


def _scan(data: bytes) -> Scan:
    if data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise _Decline
    pos = _PREAMBLE + 4
    values: dict[str, str | None] = {keyword: None for keyword, _ in WANTED.values()}
    values[MEDIA_SOP] = None
    syntax = None
    while pos < len(data) and data[pos : pos + 2] == b"\x02\x00":  # group 0002
        tag, vr, length, start = _element(data, pos, False)
        if length == _UNDEFINED or start + length > len(data):
            raise _Decline
        if tag == _TRANSFER_SYNTAX:
            syntax = _text(data[start : start + length])
        elif tag == _MEDIA_SOP_INSTANCE_UID:
            values[MEDIA_SOP] = _text(data[start : start + length])
        pos = start + length
    if syntax is None or syntax == _EXPLICIT_BE or syntax in _DEFLATED:
        raise _Decline
    implicit = syntax == _IMPLICIT_LE
    if pos + 6 <= len(data):
        if data[pos : pos + 2] == b"\x00\x00":
            raise _Decline  # a command set (group 0000): pydicom merges it
        looks_explicit = 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B
        if looks_explicit == implicit:
            raise _Decline  # the syntax and the data disagree: pydicom guesses
    elif pos < len(data):
        raise _Decline
    seen: set[int] = set()
    while pos < len(data):
        tag, vr, length, start = _element(data, pos, implicit)
        if tag in _PIXEL_TAGS:
            return Scan(values, pos, implicit)
        if tag >> 16 == 0xFFFE or tag >> 16 == 0x0002:
            raise _Decline
        if length == _UNDEFINED:
            if not (vr == b"SQ" or (implicit and vr is None)):
                raise _Decline
            pos = _skip_sequence(data, start, implicit, 1)
            continue
        end = start + length
        if end > len(data):
            raise _Decline
        wanted = WANTED.get(tag)
        if wanted is not None:
            keyword, wanted_vr = wanted
            if tag in seen or (vr is not None and vr != wanted_vr):
                raise _Decline
            seen.add(tag)
            values[keyword] = _text(data[start:end])
        pos = end
    return Scan(values, None, implicit)
