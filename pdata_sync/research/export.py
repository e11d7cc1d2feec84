"""Research export: a project's patients (or studies), de-identified, into the research
bucket, each instance once (docs/research-export.md).

Where an instance comes from, in order: the S3 archive; else the clinic's Orthanc (by the
instance id the catalog recorded, or found by StudyInstanceUID and SOPInstanceUID); else
the PDATA file the catalog names, when its content is still the archived one. An instance
none of them has is *failed*. Each instance is de-identified (:mod:`pdata_sync.research.deid`) and
stored at ``research/{project}/{pseudonym}/{study}/{series}/{sop}.dcm`` (de-identified
UIDs); one already there is *skipped* (a re-run exports nothing new). Images that may show
identifying text in their pixels are *held back*.

Nothing here links a patientGuid to a pseudonym in what it returns or writes: outcomes name
archive keys (for the clinic's audit) or de-identified UIDs (for the project's manifest),
never both in one record that leaves this module.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from pdata_sync.archive.listing import list_patients, list_prefix
from pdata_sync.archive.objects import get_bytes
from pdata_sync.archive.retrieval import validate_guid
from pdata_sync.archive.uploads import confirm_object, put_small
from pdata_sync.base.errors import BadInputError, ConfigError, PermanentError, describe
from pdata_sync.identity.keys import parse_key
from pdata_sync.orthanc.client import OrthancClient
from pdata_sync.research.deid import Deidentifier, held_back
from pdata_sync.source.pdata import read_if_unchanged

ARCHIVE = "archive"
ORTHANC = "orthanc"
PDATA = "pdata"
SOURCES = (ARCHIVE, ORTHANC, PDATA)

EXPORTED = "exported"
SKIPPED = "skipped"
HELD_BACK = "held_back"
FAILED = "failed"

_PROJECT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
RESEARCH_ROOT = "research"
REQUEST_MAX_BYTES = 64 << 20  # a CSV of a million patientGuids is 37 MB


def validate_project(project: str) -> str:
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(
            f"project {project!r}: use 1-63 lower-case letters, digits and dashes (it is part "
            "of every exported key)"
        )
    return project


def project_prefix(project: str) -> str:
    return f"{RESEARCH_ROOT}/{project}/"


def export_key(project: str, pseudonym: str, study: str, series: str, sop: str) -> str:
    return f"{project_prefix(project)}{pseudonym}/{study}/{series}/{sop}.dcm"


@dataclass(frozen=True)
class ExportRequest:
    patient_guids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.patient_guids and not self.study_uids:
            raise ConfigError("the export names no patient and no study")
        for guid in self.patient_guids:
            validate_guid(guid)
        for uid in self.study_uids:
            if not _UID.fullmatch(uid) or len(uid) > 64:
                raise ConfigError(f"{uid!r} is not a StudyInstanceUID")


def read_request_csv(path: str | Path) -> ExportRequest:
    """Patients and studies from a CSV file with a ``patient_guid`` and/or a
    ``study_instance_uid`` column; errors name the file and line."""
    source = Path(path)
    try:
        with source.open("rb") as fh:
            data = fh.read(REQUEST_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) > REQUEST_MAX_BYTES:
        raise ConfigError(f"{source}: larger than {REQUEST_MAX_BYTES >> 20} MB: not a request")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}, line {line}: not UTF-8 text (save it as UTF-8)") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _request_rows(source, reader)
    except csv.Error as exc:  # a field over the csv module's limit, ...
        # line_num counts the lines read whole; the error is in the next one
        raise ConfigError(f"{source}, line {reader.line_num + 1}: not CSV ({exc})") from None


def _request_rows(source: Path, reader: csv.DictReader) -> ExportRequest:
    columns = {c.strip() for c in reader.fieldnames or []}
    if not columns & {"patient_guid", "study_instance_uid"}:
        raise ConfigError(f"{source}: needs a patient_guid or study_instance_uid column")
    guids: list[str] = []
    studies: list[str] = []
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        guid, study = row.get("patient_guid", ""), row.get("study_instance_uid", "")
        try:
            if guid:
                guids.append(validate_guid(guid))
            if study:
                ExportRequest(study_uids=(study,))
                studies.append(study)
        except ConfigError as exc:
            raise ConfigError(f"{source}, line {line}: {exc}") from None
    return ExportRequest(tuple(dict.fromkeys(guids)), tuple(dict.fromkeys(studies)))


@dataclass(frozen=True)
class ExportItem:
    """One archived instance a request asks for, and what is known of it."""

    key: str  # its archive key
    patient_guid: str
    in_archive: bool
    rel_path: str | None = None
    sha256: str | None = None
    sop_uid: str | None = None
    study_uid: str | None = None
    orthanc_id: str | None = None


@dataclass(frozen=True)
class ExportPlan:
    """The instances a request covers, and what it asked for that this clinic does not
    have (a patientGuid or study of another clinic, or of none)."""

    items: list[ExportItem]
    not_found_guids: tuple[str, ...] = ()
    not_found_studies: tuple[str, ...] = ()


def is_clinic_key(key: str, guid: str, clinic_id: str, template: str) -> bool:
    """True if ``key``, listed under ``guid``'s prefix, is one this clinic's template makes
    for this patient: another clinic sharing the bucket has keys with its own clinic id."""
    fields = parse_key(key, template)
    return (
        fields is not None
        and fields.get("clinic_id") == clinic_id
        and fields.get("patient_guid", guid) == guid
    )


def plan_export(
    request: ExportRequest,
    catalog_rows: list[dict[str, Any]],
    listings: dict[str, set[str]],
    orthanc_ids: dict[str, str],
    clinic_id: str,
    key_template: str,
) -> ExportPlan:
    """Every instance of the request that is this clinic's: what the catalog says the
    archive held (the clinic's rows of the requested patients or studies) and what S3 lists
    under the requested patients with this clinic's keys. Other clinics' objects under the
    same patientGuid are never planned."""
    listings = {
        guid: {k for k in keys if is_clinic_key(k, guid, clinic_id, key_template)}
        for guid, keys in listings.items()
    }
    items: dict[str, ExportItem] = {}
    for row in catalog_rows:
        guid = row["patient_guid"]
        items[row["key"]] = ExportItem(
            key=row["key"],
            patient_guid=guid,
            in_archive=row["key"] in listings.get(guid, set()),
            rel_path=row["rel_path"],
            sha256=row["sha256"],
            sop_uid=row["sop_instance_uid"],
            study_uid=row["study_instance_uid"],
            orthanc_id=orthanc_ids.get(row["key"]),
        )
    for guid in request.patient_guids:
        for key in sorted(listings.get(guid, set())):
            if key not in items:
                items[key] = ExportItem(key=key, patient_guid=guid, in_archive=True)
    planned_guids = {i.patient_guid for i in items.values()}
    planned_studies = {r["study_instance_uid"] for r in catalog_rows}
    return ExportPlan(
        [items[k] for k in sorted(items)],
        tuple(g for g in request.patient_guids if g not in planned_guids),
        tuple(u for u in request.study_uids if u not in planned_studies),
    )


@dataclass(frozen=True)
class ExportOutcome:
    """What became of one instance. ``key`` is the archive key (clinic side); the
    de-identified fields are for the project's manifest: the two are never reported
    together outside this module (see :meth:`ExportReport.add`)."""

    key: str
    status: str
    source: str = ""
    reason: str = ""
    export_key: str = ""
    pseudonym: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""


@dataclass
class ExportReport:
    """An export's audit: counts by source and outcome, problems by archive key, and the
    manifest rows (de-identified only)."""

    project: str
    exported: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    skipped: int = 0
    held_back: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    manifest: list[dict[str, str]] = field(default_factory=list)
    not_found_guids: tuple[str, ...] = ()
    not_found_studies: tuple[str, ...] = ()

    def add(self, outcomes: Iterable[ExportOutcome]) -> None:
        for o in outcomes:
            if o.status == EXPORTED:
                self.exported[o.source] += 1
            elif o.status == SKIPPED:
                self.skipped += 1
            elif o.status == HELD_BACK:
                self.held_back.append({"key": o.key, "reason": o.reason})
            else:
                self.failed.append({"key": o.key, "reason": o.reason})
            if o.status == EXPORTED:
                self.manifest.append(
                    {
                        "pseudonym": o.pseudonym,
                        "study_instance_uid": o.study_uid,
                        "series_instance_uid": o.series_uid,
                        "sop_instance_uid": o.sop_uid,
                        "key": o.export_key,
                        "status": o.status,
                        "source": o.source,
                    }
                )

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_found_guids and not self.not_found_studies

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "ok": self.ok,
            "exported": sum(self.exported.values()),
            "exported_by_source": dict(self.exported),
            "skipped_already_exported": self.skipped,
            "held_back": sorted(self.held_back, key=lambda p: p["key"]),
            "failed": sorted(self.failed, key=lambda p: p["key"]),
            # asked for, and nothing of this clinic's: another clinic's patient, or a typo
            "not_found": {
                "patient_guids": list(self.not_found_guids),
                "study_uids": list(self.not_found_studies),
            },
        }

    def manifest_csv(self) -> bytes:
        """The manifest of what this run exported (pseudonyms and de-identified UIDs only)."""
        out = io.StringIO()
        columns = [
            "pseudonym",
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "key",
            "status",
            "source",
        ]
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(self.manifest, key=lambda r: r["key"]))
        return out.getvalue().encode("utf-8")


class Exporter:
    """Exports instances of one project: fetch, de-identify, store once."""

    def __init__(
        self,
        project: str,
        deidentifier: Deidentifier,
        archive: tuple[Any, str],
        destination: tuple[Any, str],
        pdata_root: Path,
        clinic_id: str,
        orthanc: OrthancClient | None = None,
    ):
        self.project = validate_project(project)
        self.clinic_id = clinic_id
        self.deid = deidentifier
        self.archive_client, self.archive_bucket = archive
        self.dest_client, self.dest_bucket = destination
        self.root = pdata_root
        self.orthanc = orthanc
        self._present: dict[str, set[str]] = {}  # pseudonym -> exported SOP UIDs

    def already_exported(self, pseudonym: str) -> set[str]:
        """De-identified SOP UIDs already in the project's folder of this pseudonym."""
        if pseudonym not in self._present:
            prefix = f"{project_prefix(self.project)}{pseudonym}/"
            keys = list_prefix(self.dest_client, self.dest_bucket, prefix)
            self._present[pseudonym] = {k.rsplit("/", 1)[-1].removesuffix(".dcm") for k in keys}
        return self._present[pseudonym]

    def _from_orthanc(self, item: ExportItem) -> bytes | None:
        if self.orthanc is None:
            return None
        ids = [item.orthanc_id] if item.orthanc_id else []
        if not ids and item.study_uid and item.sop_uid:
            ids = self.orthanc.find_instances(item.study_uid, item.sop_uid)
        for instance_id in ids:
            data = self.orthanc.file(instance_id)
            if data is None:
                continue
            if item.sha256 and hashlib.sha256(data).hexdigest() != item.sha256:
                # Orthanc keeps files as sent: other bytes are not the archived instance
                raise PermanentError("Orthanc's file is not the archived content")
            return data
        return None

    def _from_pdata(self, item: ExportItem) -> bytes | None:
        if not item.rel_path or not item.sha256:
            return None
        return read_if_unchanged(self.root / item.rel_path, item.sha256)

    def fetch(self, item: ExportItem) -> tuple[bytes, str]:
        """The instance's bytes and where they came from; BadInputError when no source
        has it."""
        if item.in_archive:
            data, metadata = get_bytes(self.archive_client, self.archive_bucket, item.key)
            if metadata.get("clinic-id") != self.clinic_id:
                # the key says this clinic, the object does not: written by someone else
                raise BadInputError("the archive object's clinic-id metadata is not this clinic's")
            return data, ARCHIVE
        tried = ["not in the archive"]
        try:
            data = self._from_orthanc(item)
        except Exception as exc:  # noqa: BLE001 - the next source may have it
            data = None
            tried.append(f"Orthanc: {describe(exc)}")
        else:
            if self.orthanc is not None and data is None:
                tried.append("not in Orthanc")
        if data is not None:
            return data, ORTHANC
        data = self._from_pdata(item)
        if data is not None:
            return data, PDATA
        tried.append("PDATA file gone or changed" if item.rel_path else "no PDATA file known")
        raise BadInputError("; ".join(tried))

    def export(self, item: ExportItem) -> ExportOutcome:
        """Export one instance; every error becomes its outcome."""
        pseudonym = self.deid.key.pseudonym(item.patient_guid)
        if item.sop_uid and self.deid.key.uid(item.sop_uid) in self.already_exported(pseudonym):
            return ExportOutcome(item.key, SKIPPED, reason="already exported")
        try:
            data, source = self.fetch(item)
        except BadInputError as exc:
            return ExportOutcome(item.key, FAILED, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported per instance
            return ExportOutcome(item.key, FAILED, reason=describe(exc))
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - not DICOM after all
            return ExportOutcome(item.key, FAILED, source=source, reason=f"not DICOM: {exc}")
        if reason := held_back(ds):
            return ExportOutcome(item.key, HELD_BACK, source=source, reason=reason)
        missing = [
            t for t in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(t)
        ]
        if missing:
            return ExportOutcome(item.key, FAILED, source=source, reason=f"no {missing[0]}")
        self.deid.deidentify(ds, item.patient_guid)
        study, series, sop = (
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
        )
        key = export_key(self.project, pseudonym, study, series, sop)
        common = dict(
            source=source,
            export_key=key,
            pseudonym=pseudonym,
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
        )
        if sop in self.already_exported(pseudonym):
            return ExportOutcome(item.key, SKIPPED, reason="already exported", **common)
        out = io.BytesIO()
        try:
            ds.save_as(out, enforce_file_format=True)
        except (AttributeError, ValueError) as exc:  # e.g. no File Meta Information
            return ExportOutcome(item.key, FAILED, source=source, reason=f"cannot write: {exc}")
        body = out.getvalue()
        digest = hashlib.sha256(body).digest()
        try:
            stored = put_small(
                self.dest_client,
                self.dest_bucket,
                key,
                body,
                {"project": self.project, "sha256": digest.hex()},
                sha256_digest=digest,
            )
            # exported only once the server confirmed it holds these bytes (ADR 0004)
            confirm_object(self.dest_client, self.dest_bucket, key, stored)
        except Exception as exc:  # noqa: BLE001 - reported per instance
            return ExportOutcome(item.key, FAILED, source=source, reason=describe(exc))
        self.already_exported(pseudonym).add(sop)
        return ExportOutcome(item.key, EXPORTED, **common)


def archive_listings(
    client: Any, bucket: str, guids: list[str], workers: int
) -> dict[str, set[str]]:
    """The archive keys under each patient's prefix; a listing that fails stops the plan
    (an export must not mistake an unreadable prefix for missing images)."""
    listings = {}
    for guid, listing in list_patients(client, bucket, guids, workers).items():
        if isinstance(listing, Exception):
            raise listing
        listings[guid] = set(listing)
    return listings
