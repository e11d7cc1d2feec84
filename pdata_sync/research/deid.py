"""De-identification for research export: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile with the Retain Longitudinal Temporal Information with Modified
Dates Option (docs/research-export.md).

The attributes and their action codes (Table E.1-1: D, Z, X, U and the combinations) come
from ``dicom-anonymizer``'s copy of the standard's table (edition 2026c); nothing here
retypes it. What this module decides, per code:

* **X** remove; **Z** empty; **D** replace with a dummy of the attribute's VR (a sequence:
  one item with the original item's attributes and dummy values). A combined code (X/Z,
  X/D, Z/D, X/Z/D, X/Z/U*) is resolved by the attribute's type in the image's IOD
  (:mod:`pdata_sync.research.iod`): type 1 takes the D (or keeps a U* sequence, its UIDs
  replaced), type 2 the Z, type 3 or unknown the X where the code has one (:func:`action`).
* **U** (and UIDs under any replacing code): ``2.25.`` + the integer of HMAC-SHA-256(project
  key, UID), first 128 bits: the same UID maps to the same UID within a project, across
  runs, and to another one in another project.
* Dates (DA, DT) the profile would touch are **shifted** by a per-patient number of days
  derived from the project key (the option); times (TM) are kept, as a whole-day shift
  leaves them unchanged. The birth date is emptied all the same (it is not longitudinal).
* Patient ID and Patient Name become the patient's **pseudonym** (keyed hash of the
  patientGuid). Private attributes are removed. Pixel data is never touched.
* Sequences are walked: the rules apply inside every item as well as at the top level.
* Around the dataset: the 128-byte preamble is zeroed and the file meta group rebuilt with
  only what PS3.10 requires (no source AE title, no private information); command, file
  meta and padding elements found inside the dataset, and group lengths, are dropped.
* ``PatientIdentityRemoved`` YES, ``DeidentificationMethod`` and its code sequence (DCM
  113100 Basic Profile, 113107 Retain Longitudinal Temporal Information Modified Dates).

An image that may carry identifying text in its pixels is held back, never exported:
``BurnedInAnnotation`` YES, or absent on a secondary capture.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pdata_sync.research.iod import PRESENT, REQUIRED, attribute_types

TABLE_EDITION = "dicomfields_2026c"
METHOD = "PS3.15 E.1 Basic Profile, E.3.6 Modified Dates (pdata-sync)"  # LO: 64 at most
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
MAX_SHIFT_DAYS = 3650
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame .1 to .4
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
BIRTH_DATE = 0x00100030

# action codes, as the library's categories name them
_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
REMOVE, EMPTY, REPLACE, UID, WALK = "remove", "empty", "replace", "uid", "walk"


def action(code: str, kind: str | None) -> str:
    """What an attribute with the action ``code`` becomes, given its ``kind`` (type 1, 1C,
    2, 2C, 3) in the image's IOD, or None where the IOD is not known or does not name it.

    A combined code lets the attribute go unless the IOD needs it: removed (X) where the
    code allows it and the type does not forbid it, emptied (Z) for type 2, a dummy (D) for
    type 1. Type 1C counts as 1: its condition cannot be judged here, and a dummy is
    conformant either way. Unknown counts as 3 (the attribute may go)."""
    required, present = kind in REQUIRED, kind in PRESENT
    if code in ("X", "Z", "D", "U"):
        return {"X": REMOVE, "Z": EMPTY, "D": REPLACE, "U": UID}[code]
    if code == "Z/D":
        return REPLACE if required else EMPTY
    if code == "X/Z":
        return EMPTY if required or present else REMOVE
    if code == "X/D":
        return REPLACE if required or present else REMOVE
    if code == "X/Z/D":
        return REPLACE if required else EMPTY if present else REMOVE
    if code == "X/Z/U*":
        # kept only where the IOD needs it: UIDs (inside, for a sequence) replaced
        return WALK if required else EMPTY if present else REMOVE
    raise ValueError(f"unknown action code {code!r}")


_DUMMY_TEXT = "ANONYMIZED"
_VR_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}
# dummies that are valid values of their VR (a dummy item must still parse)
_DUMMY_BY_VR = {"AS": "000D"}
# groups that are not the dataset's attributes: command, file meta (rebuilt), padding
_NOT_DATASET_GROUPS = (0x0000, 0x0002, 0xFFFC)
# the file meta group is rebuilt with what PS3.10 requires, and who wrote it
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "pdata-sync").int)
IMPLEMENTATION_VERSION = "PDATA_SYNC_1"  # SH, 16 at most
PREAMBLE = b"\0" * 128


@dataclass(frozen=True)
class Table:
    """Table E.1-1 as the library carries it: action code per tag, and masked ranges."""

    codes: dict[int, str]
    ranges: tuple[tuple[int, int, int, int, str], ...]

    def code(self, tag: int) -> str | None:
        if tag in self.codes:
            return self.codes[tag]
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gmask, emask, code in self.ranges:
            if group & gmask == g & gmask and element & emask == e & emask:
                return code
        return None


@lru_cache(maxsize=1)
def basic_profile() -> Table:
    """Table E.1-1 (Basic Profile column) from dicom-anonymizer."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    categories = dicom_anonymization_database_selector(TABLE_EDITION)
    codes: dict[int, str] = {}
    ranges: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORIES.items():
        for tag in categories[category]:
            if len(tag) == 2:
                codes[(tag[0] << 16) | tag[1]] = code
            else:
                ranges.append((tag[0], tag[1], tag[2], tag[3], code))
    return Table(codes, tuple(ranges))


SECRET_MIN_BYTES = 32  # 256 bits
_HEX = frozenset("0123456789abcdefABCDEF")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")


def secret_problem(secret: str | None) -> str | None:
    """Why ``secret`` is too weak to key a project's pseudonyms, or None. Whoever knows
    the secret and a project's slug can compute every patient's pseudonym from the
    patientGuids, so it must carry 256 bits: 64 hex digits, 43 base64 characters, or 32
    bytes of other text; and not one character repeated (8 different at least)."""
    text = (secret or "").strip()
    if not text:
        return "it is empty"
    if set(text) <= _HEX:
        need, unit, have = 64, "hex digits", len(text)
    elif set(text) <= _BASE64:
        need, unit, have = 43, "base64 characters", len(text.rstrip("="))
    else:
        need, unit, have = SECRET_MIN_BYTES, "bytes", len(text.encode())
    if have < need:
        return f"it has {have} {unit}, 256 bits need {need}"
    if len(set(text)) < 8:
        return f"it uses only {len(set(text))} different characters"
    return None


@dataclass(frozen=True)
class ProjectKey:
    """The keyed hashes of one research project: ``ProjectKey.of(secret, slug)``."""

    key: bytes

    @classmethod
    def of(cls, secret: str, project: str) -> ProjectKey:
        if problem := secret_problem(secret):
            raise ValueError(f"research secret too weak: {problem}")
        digest = hmac.new(secret.encode(), f"pdata-sync project {project}".encode(), "sha256")
        return cls(digest.digest())

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """A ``2.25.`` UID for ``uid``: the same within the project, another in another."""
        return "2.25." + str(int.from_bytes(self._mac("uid", uid.strip())[:16], "big"))

    def pseudonym(self, patient_guid: str) -> str:
        """The patient's name and id in the export (never reversible without the key)."""
        mac = self._mac("patient", patient_guid.lower())
        return "RP" + base64.b32encode(mac[:10]).decode().rstrip("=")

    def date_shift(self, patient_guid: str) -> timedelta:
        """Days every date of the patient moves back: 1 to 3650, never 0."""
        mac = self._mac("dates", patient_guid.lower())
        return timedelta(days=1 + int.from_bytes(mac[:4], "big") % MAX_SHIFT_DAYS)


def held_back(ds: Dataset) -> str | None:
    """Why ``ds`` must not be exported (identifying text may be in its pixels), or None."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "burned-in annotation (BurnedInAnnotation YES): held back"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not burned and sop_class.startswith(SECONDARY_CAPTURE):
        return "secondary capture without BurnedInAnnotation: held back"
    return None


def _shift_date(value: str, shift: timedelta) -> str:
    text = value.strip()
    if not text:
        return value
    try:
        day = datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""  # not a date: nothing of it is kept
    moved: date = day - shift
    return moved.strftime("%Y%m%d") + text[8:]


def _shift_dates(elem: Any, shift: timedelta) -> None:
    """The option: dates the profile touches move back by the patient's shift; times are
    kept, as a whole-day shift leaves them as they were."""
    if elem.VR == "TM":
        return
    values = elem.value if elem.VM > 1 else [elem.value]
    shifted = [_shift_date(str(v), shift) for v in values if v is not None]
    elem.value = shifted if elem.VM > 1 else (shifted[0] if shifted else "")


def _dummy(vr: str) -> Any:
    """A value of ``vr`` that says nothing (UIDs and sequences are handled by the caller)."""
    if vr in ("DS", "IS"):
        return "0"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"):
        return 0
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b""
    if vr in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[vr]
    return _DUMMY_TEXT[: _VR_MAX.get(vr, 64)]


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return str(meta.TransferSyntaxUID)
    encoding = getattr(ds, "original_encoding", None)  # a file read without its meta
    if not encoding or encoding[0] is None:
        return None
    implicit, little = encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


class _Run(NamedTuple):
    """What one dataset's walk needs: its patient's date shift, its IOD's attribute types."""

    shift: timedelta
    types: dict[tuple[str, ...], str] | None


class Deidentifier:
    """De-identifies datasets of one project; ``deidentify(ds, patient_guid)`` in place."""

    def __init__(self, key: ProjectKey, table: Table | None = None):
        self.key = key
        self.table = table or basic_profile()

    def _uids(self, value: Any) -> Any:
        if isinstance(value, (list, pydicom.multival.MultiValue)):
            return [self.key.uid(str(v)) for v in value]
        return self.key.uid(str(value)) if str(value).strip() else value

    def _dummy_item(self, item: Dataset, run: _Run) -> Dataset:
        """An item with the attributes of ``item`` (private ones dropped) and none of its
        values: what a sequence coded D becomes, one such item. Dates and times are treated
        as the option treats them everywhere (shifted, kept); UIDs map as everywhere."""
        out = Dataset()
        for elem in item:
            if elem.tag.is_private or elem.tag.element == 0:
                continue
            if elem.VR == "SQ":
                inner = [self._dummy_item(elem.value[0], run)] if len(elem.value) else []
                out.add_new(elem.tag, "SQ", DicomSequence(inner))
            elif elem.VR == "UI":
                out.add_new(elem.tag, "UI", self._uids(elem.value) if elem.value else "")
            elif elem.VR in ("DA", "DT", "TM"):
                out.add_new(elem.tag, elem.VR, elem.value)
                _shift_dates(out[elem.tag], run.shift)
            else:
                out.add_new(elem.tag, elem.VR, _dummy(elem.VR))
        return out

    def _element(self, ds: Dataset, tag: BaseTag, run: _Run, where: tuple) -> None:
        elem = ds[tag]
        top = not where
        if top and tag in (PATIENT_ID, PATIENT_NAME):
            return  # the pseudonym, set after the walk
        if top and tag.group in _NOT_DATASET_GROUPS or tag.element == 0:
            del ds[tag]  # not an attribute of the image: meta is rebuilt, lengths recomputed
            return
        code = self.table.code(int(tag))
        here = (*where, elem.keyword or str(tag))
        if code is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    self._walk(item, run, here)
            return
        if tag == BIRTH_DATE:
            elem.value = ""
            return
        effect = action(code, run.types.get(here) if run.types is not None else None)
        if effect == REMOVE:
            del ds[tag]
        elif elem.VR == "SQ":
            self._sequence(elem, effect, run, here)
        elif elem.VR in ("DA", "DT", "TM"):
            _shift_dates(elem, run.shift)
        elif elem.VR == "UI" and effect != EMPTY:
            elem.value = self._uids(elem.value)
        elif effect == EMPTY:
            elem.value = None
        else:
            elem.value = _dummy(elem.VR)

    def _sequence(self, elem: Any, effect: str, run: _Run, here: tuple) -> None:
        if effect == EMPTY:
            elem.value = DicomSequence([])
        elif effect == WALK:  # kept for the IOD: its items de-identified as any other
            for item in elem.value:
                self._walk(item, run, here)
        elif len(elem.value):  # D, and U on a sequence: one item that says nothing
            elem.value = DicomSequence([self._dummy_item(elem.value[0], run)])

    def _walk(self, ds: Dataset, run: _Run, where: tuple = ()) -> None:
        ds.remove_private_tags()
        for tag in list(ds.keys()):
            if tag in ds:
                self._element(ds, tag, run, where)

    def deidentify(self, ds: Dataset, patient_guid: str) -> Dataset:
        """De-identify ``ds`` (of the patient ``patient_guid``) in place, the file around it
        too: the preamble zeroed, the file meta rebuilt with only what PS3.10 requires;
        returns it."""
        pseudonym = self.key.pseudonym(patient_guid)
        meta = getattr(ds, "file_meta", None)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if not sop_class and meta is not None:
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        transfer_syntax = _transfer_syntax(ds)
        run = _Run(
            self.key.date_shift(patient_guid),
            attribute_types(sop_class) if sop_class else None,
        )
        self._walk(ds, run)
        ds.PatientID = pseudonym
        ds.PatientName = pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in METHOD_CODES:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        ds.file_meta = self._file_meta(ds, sop_class, transfer_syntax)
        ds.preamble = PREAMBLE
        return ds

    def _file_meta(self, ds: Dataset, sop_class: str, transfer_syntax: str | None) -> Any:
        """PS3.10's file meta elements and nothing else (no source AE title, no private
        information); the group length is written by pydicom."""
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if transfer_syntax:
            meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        return meta
