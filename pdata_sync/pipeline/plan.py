"""Turn what was found (files, patients, resolutions, media rows) into upload work.

Pure functions: no I/O, no Prefect. The batches are the unit of one Prefect task run
(see docs/adr/0002-task-granularity.md).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from pdata_sync.identity.keys import render_key
from pdata_sync.identity.rules import HeaderCheck, card_digest
from pdata_sync.source.pdata import ImageFile, Problem
from pdata_sync.source.sidexis_db import MediaRow

SKIP_MEDIA_DELETED = "images_media_deleted"
SKIP_PATIENT_UNRESOLVED = "patients_card_id_unknown"
NOTE_NO_MEDIA_ROW = "no media row in the database; uploaded under the fallback name"
NOTE_MEDIA_ROW_VANISHED = (
    "its media row is missing from the database; kept under the name it was archived with"
)


@dataclass(frozen=True)
class PlannedImage:
    """One object to make sure of: this file under this key."""

    rel_path: str
    patient_guid: str
    image_id: int
    image_name: str | None
    key: str
    # what the file's own PatientID may name (None: not checked)
    header: HeaderCheck | None = None


@dataclass
class Plan:
    images: list[PlannedImage]
    skipped: Counter[str]
    notes: list[Problem]  # uploaded, but worth telling (e.g. no media row)
    failed: list[Problem]  # could not be planned (e.g. resolver failed for the patient)
    media_deleted: list[str] = field(default_factory=list)  # paths whose media row is deleted


def guids_per_patient(
    card_ids: dict[int, list[str]], mapping: dict[str, str]
) -> dict[int, list[str]]:
    """Distinct patientGuids of each patient, in CardId order; patients with none omitted."""
    result: dict[int, list[str]] = {}
    for pid, cards in card_ids.items():
        guids = list(dict.fromkeys(mapping[c] for c in cards if c in mapping))
        if guids:
            result[pid] = guids
    return result


@dataclass(frozen=True)
class PatientResolution:
    """Which patients' images go where: patientGuids per patient, patients whose
    resolution failed (their images fail), and how many resolved to nothing."""

    guids: dict[int, list[str]]
    failed: dict[int, str]  # patient id -> why
    unresolved: int

    def wanted(self, images: list[ImageFile]) -> list[ImageFile]:
        """The images to plan: those of resolved patients and of failed ones (reported)."""
        return [i for i in images if i.patient_id in self.guids or i.patient_id in self.failed]

    def media_ids(self, images: list[ImageFile]) -> list[int]:
        """The imageIds whose media rows are needed (resolved patients only)."""
        return [i.image_id for i in images if i.patient_id in self.guids]


def resolve_patients(
    card_ids: dict[int, list[str]], mapping: dict[str, str], failed: dict[str, str]
) -> PatientResolution:
    """Combine each patient's CardIds with the resolver's answers (``failed``: CardId ->
    why its resolution failed)."""
    guids = guids_per_patient(card_ids, mapping)
    failed_patients = {
        pid: f"patientGuid not resolved: {failed[c]}"
        for pid, cards in card_ids.items()
        for c in cards
        if c in failed
    }
    unresolved = sum(1 for pid in card_ids if pid not in guids and pid not in failed_patients)
    return PatientResolution(guids, failed_patients, unresolved)


def media_conflict(image: ImageFile, row_patient_id: int) -> str:
    """The reason an image whose media row names another patient is not uploaded (Sidexis
    ids only: no names, no CardIds)."""
    return (
        f"media row {image.image_id} names patient {row_patient_id}, but the file is in the "
        f"folder of patient {image.patient_id}: not uploaded (conflict)"
    )


def build_plan(
    *,
    images: list[ImageFile],
    patient_guids: dict[int, list[str]],
    failed_patients: dict[int, str],
    media: dict[int, MediaRow],
    clinic_id: str,
    key_template: str,
    archived_names: Mapping[int, str] | None = None,
    card_ids: Mapping[int, list[str]] | None = None,
    header_rule: str = "off",
) -> Plan:
    """Decide the key of every image of every resolved patient.

    ``failed_patients`` holds patients whose CardIds could not be resolved because of an
    error (not because the platform does not know them): their images are reported failed,
    so that nothing is silently left behind.

    ``archived_names``: the names images without a media row are archived under
    (:func:`pdata_sync.pipeline.outage.names_archived`). Such an image keeps that name: a media row
    that vanished (a database being restored, a wrong database) never re-keys it to the
    fallback name. Only an image that never had a name gets the fallback name.

    ``card_ids`` (each patient's CardIds) and ``header_rule`` say what each file's own
    PatientID may name (:class:`~pdata_sync.identity.rules.HeaderCheck`, checked when the file is
    read).
    """
    archived_names = archived_names or {}
    checks: dict[int, HeaderCheck] = {}
    skipped: Counter[str] = Counter()
    notes: list[Problem] = []
    failed: list[Problem] = []
    planned: list[PlannedImage] = []
    media_deleted: list[str] = []
    for image in images:
        if image.patient_id in failed_patients:
            failed.append(Problem(image.rel_path, failed_patients[image.patient_id]))
            if image.patient_id not in patient_guids:
                continue
        guids = patient_guids.get(image.patient_id)
        if not guids:
            continue  # the patient was skipped and counted already
        row = media.get(image.image_id)
        if row is not None and row.deleted:
            skipped[SKIP_MEDIA_DELETED] += 1
            media_deleted.append(image.rel_path)
            continue
        if row is not None and row.patient_id is not None and row.patient_id != image.patient_id:
            failed.append(Problem(image.rel_path, media_conflict(image, row.patient_id)))
            continue
        if row is not None:
            name = row.name or ""  # "": a row without a name; None: no row at all
        elif image.image_id in archived_names:
            name = archived_names[image.image_id]
            notes.append(Problem(image.rel_path, NOTE_MEDIA_ROW_VANISHED))
        else:
            name = None
            notes.append(Problem(image.rel_path, NOTE_NO_MEDIA_ROW))
        header = None
        if header_rule != "off":
            header = checks.get(image.patient_id)
            if header is None:
                cards = (card_ids or {}).get(image.patient_id, [])
                header = checks[image.patient_id] = HeaderCheck(
                    header_rule, image.patient_id, frozenset(map(card_digest, cards))
                )
        for guid in guids:
            key = render_key(
                key_template,
                patient_guid=guid,
                clinic_id=clinic_id,
                image_id=image.image_id,
                name=name,
            )
            planned.append(PlannedImage(image.rel_path, guid, image.image_id, name, key, header))
    planned, conflicts = without_shared_keys(planned)
    failed.extend(conflicts)
    conflicted = {p.path for p in conflicts}
    notes = [n for n in notes if n.path not in conflicted]
    return Plan(planned, skipped, notes, failed, media_deleted)


def key_conflict(key: str, other_path: str) -> str:
    """The reason an image whose key another image also got is not uploaded."""
    return f"key conflict: {other_path} has the same key {key}; neither is uploaded"


def without_shared_keys(planned: list[PlannedImage]) -> tuple[list[PlannedImage], list[Problem]]:
    """Drop every image that shares a key with another file, failing each with the other's
    path: uploading either would hide the other (product-rules §3.1). The configuration
    refuses templates that allow this; this is the check at the moment it would matter."""
    paths_of: dict[str, list[str]] = defaultdict(list)
    for item in planned:
        if item.rel_path not in paths_of[item.key]:
            paths_of[item.key].append(item.rel_path)
    shared = {key: paths for key, paths in paths_of.items() if len(paths) > 1}
    if not shared:
        return planned, []
    conflicts: dict[str, Problem] = {}
    for key, paths in sorted(shared.items()):
        for path in paths:
            other = next(p for p in paths if p != path)
            conflicts.setdefault(path, Problem(path, key_conflict(key, other)))
    return [i for i in planned if i.rel_path not in conflicts], list(conflicts.values())


def make_batches(images: list[PlannedImage], batch_size: int) -> list[list[PlannedImage]]:
    """Pack images into batches of at most ``batch_size``, keeping each patientGuid's images
    together where they fit, so each batch lists few S3 prefixes."""
    by_guid: dict[str, list[PlannedImage]] = defaultdict(list)
    for image in images:
        by_guid[image.patient_guid].append(image)
    batches: list[list[PlannedImage]] = []
    current: list[PlannedImage] = []
    for guid in sorted(by_guid):
        group = by_guid[guid]
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            if len(current) + len(chunk) > batch_size:
                batches.append(current)
                current = []
            current.extend(chunk)
    if current:
        batches.append(current)
    return batches
