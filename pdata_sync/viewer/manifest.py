"""OHIF's DICOM JSON manifest for one patient, built from S3 alone (docs/viewer.md).

The manifest is what OHIF's ``dicomjson`` data source loads: studies, each with its series,
each with its instances; an instance is the naturalized header OHIF reads (``metadata``) and
a ``dicomweb:`` URL it GETs whole (a presigned S3 URL). Headers come from a ranged GET of the
start of each object, so nothing but S3 is needed: no catalog, no PDATA, no database.

PatientID is the patientGuid, whatever the file says: the Sidexis patient id inside the file
is not published, nor are the patient's name and birth date (the viewer identifies the
patient by the patientGuid it was opened with). Nothing is added that the image does not
carry itself.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.uid import generate_uid

HEADER_FIRST_READ = 64 * 1024
HEADER_MAX_READ = 8 * 1024 * 1024

# Without these OHIF cannot place or draw an instance: such an object is left out of the
# manifest and reported (it stays retrievable and downloadable).
VIEWER_REQUIRED = (
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
)
# What OHIF's loader and its cornerstone image loader read from an instance (OHIF/Viewers
# .scripts/dicom-json-generator.js), plus what its panels show.
INSTANCE_FIELDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "InstanceNumber",
    *VIEWER_REQUIRED,
    "PlanarConfiguration",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ImageType",
    "ImageLaterality",
    "AcquisitionDate",
    "ContentDate",
    "ContentTime",
)
STUDY_FIELDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
)
SERIES_FIELDS = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "SeriesDate",
    "SeriesTime",
)


class HeaderError(Exception):
    """The object's start is not a DICOM header pdata-sync can read."""


def parse_header(data: bytes, complete: bool) -> pydicom.Dataset | None:
    """The header (everything before the pixel data) in ``data``, the first bytes of a file.

    Returns None when ``data`` ends inside the header and more bytes are needed (never when
    ``complete``, the whole file); raises :class:`HeaderError` when it is not DICOM.
    """
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(stream, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - truncated headers fail in many ways
        if complete:
            raise HeaderError(f"not a readable DICOM file: {type(exc).__name__}") from exc
        return None
    # pydicom stops without error at the end of the bytes: unless it stopped at the pixel
    # data (something left to read), a cut header looks whole. Ask for more.
    if not complete and stream.tell() >= len(data):
        return None
    return ds


def missing_for_viewer(ds: pydicom.Dataset) -> list[str]:
    """The header fields OHIF needs to draw the image that ``ds`` lacks."""
    return [name for name in VIEWER_REQUIRED if ds.get(name) in (None, "")]


def _json_value(value: Any) -> Any:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, pydicom.valuerep.PersonName):
        return str(value)
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.DSdecimal | float):
        return float(value)
    if isinstance(value, pydicom.valuerep.IS | int):
        return int(value)
    if isinstance(value, bytes):
        return None
    return str(value)


def _pick(ds: pydicom.Dataset, names: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        try:
            value = ds.get(name)
        except Exception:  # noqa: BLE001, S112 - a malformed value is left out
            continue
        if value is None or value == "":
            continue
        try:
            converted = _json_value(value)
        except (TypeError, ValueError):
            continue
        if converted is not None:
            out[name] = converted
    return out


@dataclass
class Instance:
    """One image for the manifest: its header, its presigned URL, maybe a thumbnail URL."""

    key: str
    header: pydicom.Dataset
    url: str
    thumbnail_url: str | None = None
    notes: list[str] = field(default_factory=list)
    name: str | None = None  # the Sidexis image name from the object's metadata
    image_id: int | None = None  # the Sidexis image id: the order images were taken in


def _uid(ds: pydicom.Dataset, name: str, key: str, notes: list[str]) -> str:
    value = str(ds.get(name) or "").strip()
    if value:
        return value
    notes.append(f"{name} missing; a stable one was made from the key")
    return generate_uid(entropy_srcs=[key, name])


def instance_entry(item: Instance, patient_guid: str) -> dict[str, Any]:
    """The manifest's instance: OHIF's metadata, then ``url`` (and ``thumbnail``)."""
    ds = item.header
    metadata = _pick(ds, INSTANCE_FIELDS)
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        metadata[name] = _uid(ds, name, item.key, item.notes)
    metadata["SOPClassUID"] = str(
        ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "")
    )
    if int(metadata.get("NumberOfFrames", 1) or 1) <= 1:
        metadata.pop("NumberOfFrames", None)
    metadata["PatientID"] = patient_guid
    entry: dict[str, Any] = {"metadata": metadata, "url": "dicomweb:" + item.url}
    if item.thumbnail_url:
        entry["thumbnail"] = item.thumbnail_url
    return entry


def _sort_number(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int) else (1, str(value or ""))


def build_manifest(items: list[Instance], patient_guid: str) -> dict[str, Any]:
    """Group instances by study and series, in date and number order."""
    studies: dict[str, dict[str, Any]] = {}
    for item in items:
        entry = instance_entry(item, patient_guid)
        meta = entry["metadata"]
        study = studies.setdefault(
            meta["StudyInstanceUID"],
            {
                **_pick(item.header, STUDY_FIELDS),
                "StudyInstanceUID": meta["StudyInstanceUID"],
                "PatientID": patient_guid,
                "series": {},
            },
        )
        series = study["series"].setdefault(
            meta["SeriesInstanceUID"],
            {
                **_pick(item.header, SERIES_FIELDS),
                "SeriesInstanceUID": meta["SeriesInstanceUID"],
                "instances": [],
                "_names": [],
                "_order": None,
            },
        )
        series["instances"].append(entry)
        if item.name and item.name not in series["_names"]:
            series["_names"].append(item.name)
        if item.image_id is not None and (
            series["_order"] is None or item.image_id < series["_order"]
        ):
            series["_order"] = item.image_id  # the series' first image
    out = []
    for study in sorted(
        studies.values(), key=lambda s: (s.get("StudyDate", ""), s["StudyInstanceUID"])
    ):
        series_list = _labelled(list(study.pop("series").values()))
        for series in series_list:
            series["instances"].sort(
                key=lambda i: (
                    _sort_number(i["metadata"].get("InstanceNumber")),
                    i["metadata"]["SOPInstanceUID"],
                )
            )
        modalities = sorted({s.get("Modality", "") for s in series_list} - {""})
        study["Modalities"] = "\\".join(modalities)
        study["NumInstances"] = sum(len(s["instances"]) for s in series_list)
        study["series"] = series_list
        out.append(study)
    return {"studies": out}


def _labelled(series_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A study's series as a person reads them: the Sidexis image name as SeriesDescription
    (what OHIF labels a thumbnail with; a bitewing and an OPG otherwise look alike until
    opened), the header's own where no name is known; and the series in the order the
    images were taken (their Sidexis image ids), numbered 1, 2, ... in that order (the
    headers' numbers are often all 0 or all 1). Without image ids, the headers' order."""
    if any(s["_order"] is None for s in series_list):
        series_list.sort(
            key=lambda s: (_sort_number(s.get("SeriesNumber")), s["SeriesInstanceUID"])
        )
    else:
        series_list.sort(key=lambda s: (s["_order"], s["SeriesInstanceUID"]))
        for place, series in enumerate(series_list, start=1):
            series["SeriesNumber"] = place
    for series in series_list:
        names = series.pop("_names")
        series.pop("_order")
        if names:
            series["SeriesDescription"] = " / ".join(names)[:64]
    return series_list


def read_header(
    fetch: Callable[[int], tuple[bytes, int]], first: int = HEADER_FIRST_READ
) -> pydicom.Dataset:
    """Read an object's header with as few bytes as it takes: ``fetch(n)`` returns the first
    ``n`` bytes and the object's size; the request doubles until the header is whole."""
    length = first
    while True:
        data, size = fetch(length)
        complete = len(data) >= size
        ds = parse_header(data, complete)
        if ds is not None:
            return ds
        if length >= HEADER_MAX_READ:
            raise HeaderError(f"no pixel data within the first {HEADER_MAX_READ} bytes")
        length = min(length * 4, HEADER_MAX_READ)
