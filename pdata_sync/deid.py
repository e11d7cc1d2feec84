"""De-identification for research export: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile with the Retain Longitudinal Temporal Information with Modified
Dates Option (docs/research-export.md).

The attributes and their action codes (Table E.1-1: D, Z, X, U and the combinations) come
from ``dicom-anonymizer``'s copy of the standard's table (edition 2026c); nothing here
retypes it. What this module decides, per code:

* **X** remove; **Z** empty; **D** replace with a dummy of the attribute's VR; the
  combinations take the conservative reading (X/Z: empty, Z/D, X/D, X/Z/D: replace,
  X/Z/U*: UIDs replaced, sequences emptied).
* **U** (and UIDs under any replacing code): ``2.25.`` + the integer of HMAC-SHA-256(project
  key, UID), first 128 bits: the same UID maps to the same UID within a project, across
  runs, and to another one in another project.
* Dates (DA, DT) the profile would touch are **shifted** by a per-patient number of days
  derived from the project key (the option); times (TM) are kept, as a whole-day shift
  leaves them unchanged. The birth date is emptied all the same (it is not longitudinal).
* Patient ID and Patient Name become the patient's **pseudonym** (keyed hash of the
  patientGuid). Private attributes are removed. Pixel data is never touched.
* Sequences are walked: the rules apply inside every item as well as at the top level.
* ``PatientIdentityRemoved`` YES, ``DeidentificationMethod`` and its code sequence (DCM
  113100 Basic Profile, 113107 Retain Longitudinal Temporal Information Modified Dates).

An image that may carry identifying text in its pixels is held back, never exported:
``BurnedInAnnotation`` YES, or absent on a secondary capture.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

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
# what each code does here (see the module docstring)
_EFFECT = {
    "D": "replace",
    "Z": "empty",
    "X": "remove",
    "U": "uid",
    "Z/D": "replace",
    "X/Z": "empty",
    "X/D": "replace",
    "X/Z/D": "replace",
    "X/Z/U*": "uid-or-empty",
}
_DUMMY_TEXT = "ANONYMIZED"
_VR_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}


class HeldBack(Exception):
    """The image is not exported; the message says why."""


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


@dataclass(frozen=True)
class ProjectKey:
    """The keyed hashes of one research project: ``ProjectKey.of(secret, slug)``."""

    key: bytes

    @classmethod
    def of(cls, secret: str, project: str) -> ProjectKey:
        if not secret:
            raise ValueError("empty research secret")
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


def _dummy(vr: str) -> Any:
    if vr in ("DS", "IS"):
        return "0"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if vr == "UI":
        return None  # handled as a UID
    if vr == "SQ":
        return DicomSequence([])
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b""
    return _DUMMY_TEXT[: _VR_MAX.get(vr, 64)]


class Deidentifier:
    """De-identifies datasets of one project; ``deidentify(ds, patient_guid)`` in place."""

    def __init__(self, key: ProjectKey, table: Table | None = None):
        self.key = key
        self.table = table or basic_profile()

    def _uids(self, value: Any) -> Any:
        if isinstance(value, (list, pydicom.multival.MultiValue)):
            return [self.key.uid(str(v)) for v in value]
        return self.key.uid(str(value)) if str(value).strip() else value

    def _element(self, ds: Dataset, tag: BaseTag, shift: timedelta, top: bool) -> None:
        elem = ds[tag]
        if top and tag in (PATIENT_ID, PATIENT_NAME):
            return  # the pseudonym, set after the walk
        code = self.table.code(int(tag))
        if code is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    self._walk(item, shift, top=False)
            return
        effect = _EFFECT[code]
        if tag == BIRTH_DATE:
            elem.value = ""
            return
        if effect == "remove":
            del ds[tag]
            return
        if elem.VR in ("DA", "DT"):
            # the option: dates the profile touches are moved, consistently per patient
            values = elem.value if elem.VM > 1 else [elem.value]
            shifted = [_shift_date(str(v), shift) for v in values if v is not None]
            elem.value = shifted if elem.VM > 1 else (shifted[0] if shifted else "")
            return
        if elem.VR == "TM":
            return  # the option keeps times: a whole-day shift leaves them as they were
        if elem.VR == "UI" and effect in ("uid", "uid-or-empty", "replace"):
            elem.value = self._uids(elem.value)
            return
        if effect in ("empty", "uid-or-empty"):
            elem.value = DicomSequence([]) if elem.VR == "SQ" else None
            return
        if effect == "uid":
            elem.value = self._uids(elem.value)
            return
        elem.value = _dummy(elem.VR)

    def _walk(self, ds: Dataset, shift: timedelta, top: bool = True) -> None:
        ds.remove_private_tags()
        for tag in list(ds.keys()):
            if tag in ds:
                self._element(ds, tag, shift, top)

    def deidentify(self, ds: Dataset, patient_guid: str) -> Dataset:
        """De-identify ``ds`` (of the patient ``patient_guid``) in place; returns it."""
        shift = self.key.date_shift(patient_guid)
        pseudonym = self.key.pseudonym(patient_guid)
        self._walk(ds, shift)
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
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = (
                ds.SOPInstanceUID
                if "SOPInstanceUID" in ds
                else self.key.uid(str(meta.MediaStorageSOPInstanceUID))
            )
        return ds
