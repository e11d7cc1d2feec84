"""Incremental runs: which patient folders a sync must read, and what it may record after.

Pure decisions, testable without a database, S3 or Prefect (docs/adr/0010-incremental-runs.md).

A patient's *digest* is a hash over everything Sidexis and the resolver say about the
patient: their CardIds and deleted flag, the patientGuids those CardIds resolve to (or that
they are unknown, or failed), and every media row naming them (id, name, deleted flag). An
incremental run reads the patient and media tables (the database, not the share), computes
every digest and lists only the folders of patients whose digest differs from the one the
catalog recorded after the last run that handled them completely. A new image, an image
moved to another patient, a renamed or deleted media row, a changed CardId, a deleted
patient and a patient the resolver now knows all change a digest.

A digest is recorded only for a patient whose folder this run read and whose every image
ended uploaded, unchanged or deliberately skipped: a patient with a failed, rejected or
missing image keeps no digest and is read again next run. Nothing is recorded when the run
stops early; a crashed run therefore re-does, never skips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from pdata_sync.base.clock import in_the_future
from pdata_sync.source.pdata import ImageFile, parse_patient_folder

FULL = "full"
INCREMENTAL = "incremental"

# why a run reads every folder (the summary's full_reason)
WHY_REQUESTED = "requested (--full / full_run)"
WHY_DISABLED = "incremental runs are off for this clinic (incremental: false)"
WHY_NO_MEDIA_PATIENT = (
    "database.media_patient_column is not set: media rows cannot be matched to patients"
)
WHY_FIRST = "no earlier run recorded for this clinic and destination"
WHY_CONFIG = "the clinic's source, key or resolver settings changed since the last full run"
WHY_DUE = "the periodic full reconcile is due (full_every_days)"
WHY_FUTURE = (
    "the last full run or a patient's mark is dated in the future (a clock that ran ahead, "
    "a restored VM): nothing recorded is trusted"
)
# reasons that hold for every run of the clinic: such runs record nothing
UNTRACKED = frozenset({WHY_DISABLED, WHY_NO_MEDIA_PATIENT})


class MediaEntry(NamedTuple):
    """One media row as the digest sees it (Sidexis ids and the image name only); a tuple,
    as a clinic has a hundred thousand of them."""

    image_id: int
    name: str | None
    deleted: bool


@dataclass(frozen=True)
class PatientFacts:
    """What the database and the resolver say about one patient with a folder."""

    card_ids: tuple[str, ...]  # usable CardIds, in database order; empty if none
    skipped: str  # why the patient is skipped (deleted, not in database, ...); "" if not
    guids: tuple[str, ...]  # resolved patientGuids
    failed: str  # why the resolution failed; "" if it did not
    media: tuple[MediaEntry, ...]


def patient_facts(
    patient_ids: Iterable[int],
    *,
    card_ids: Mapping[int, list[str]],
    skipped: Mapping[int, str],
    mapping: Mapping[str, str],
    failed: Mapping[str, str],
    media: Mapping[int, list[tuple[int, str | None, bool]]],
) -> dict[int, PatientFacts]:
    """Each patient's facts from the patient lookup (``card_ids``, ``skipped``), the
    resolver's answers (``mapping``, ``failed``: CardId -> why) and the media rows."""
    facts: dict[int, PatientFacts] = {}
    for pid in patient_ids:
        cards = tuple(card_ids.get(pid, ()))
        facts[pid] = PatientFacts(
            card_ids=cards,
            skipped=skipped.get(pid, ""),
            guids=tuple(dict.fromkeys(mapping[c] for c in cards if c in mapping)),
            failed="; ".join(sorted({failed[c] for c in cards if c in failed})),
            media=tuple(map(MediaEntry._make, media.get(pid, ()))),
        )
    return facts


def patient_digest(facts: PatientFacts) -> str:
    """SHA-256 over the patient's facts, in a canonical form (the catalog keeps only this)."""
    document = {
        "cards": list(facts.card_ids),
        "skipped": facts.skipped,
        "guids": list(facts.guids),
        "failed": facts.failed,
        "media": sorted([m.image_id, m.name, m.deleted] for m in facts.media),
    }
    encoded = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def settings_digest(parts: Mapping[str, object]) -> str:
    """SHA-256 of the settings whose change makes every recorded digest meaningless (where
    the files are, how keys are made, which resolver answers)."""
    encoded = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LastFull:
    """The catalog's record of the last full run of a clinic in a destination."""

    at: datetime
    settings: str


def choose_mode(
    *,
    enabled: bool,
    media_patient_column: bool,
    requested_full: bool,
    last_full: LastFull | None,
    settings: str,
    full_every: timedelta,
    now: datetime,
    latest_mark: datetime | None = None,
) -> tuple[str, str]:
    """(``FULL`` or ``INCREMENTAL``, why a full run); the first reason that applies wins.
    ``latest_mark``: when the newest patient mark was recorded."""
    if not enabled:
        return FULL, WHY_DISABLED
    if not media_patient_column:
        return FULL, WHY_NO_MEDIA_PATIENT
    if requested_full:
        return FULL, WHY_REQUESTED
    if last_full is None:
        return FULL, WHY_FIRST
    if in_the_future(last_full.at, now) or in_the_future(latest_mark, now):
        return FULL, WHY_FUTURE  # else no full run would be due until that date
    if last_full.settings != settings:
        return FULL, WHY_CONFIG
    if now - last_full.at >= full_every:
        return FULL, WHY_DUE
    return INCREMENTAL, ""


def changed_patients(current: Mapping[int, str], recorded: Mapping[int, str]) -> frozenset[int]:
    """Patients (with a folder) whose digest differs from the recorded one, or who have none."""
    return frozenset(pid for pid, digest in current.items() if recorded.get(pid) != digest)


def patient_of_path(path: str) -> int | None:
    """The Sidexis patient id of a PDATA-relative path (``P_12/0000_5.dcm`` or ``P_12``)."""
    return parse_patient_folder(path.split("/", 1)[0])


@dataclass(frozen=True)
class ChangeSet:
    """What an incremental-capable run decided before reading the share."""

    mode: str
    full_reason: str
    digests: Mapping[int, str]  # every patient with a folder -> digest now
    read: frozenset[int] | None  # the patients whose folders to read; None: every folder
    expected: Mapping[int, frozenset[int]] = field(default_factory=dict)  # live media ids
    settings: str = ""

    @property
    def tracked(self) -> bool:
        """Whether this run records digests (the clinic can run incrementally)."""
        return self.full_reason not in UNTRACKED


@dataclass(frozen=True)
class Record:
    """What a run writes back: digests to keep, patients to forget (read again next run)."""

    keep: dict[int, str]
    forget: frozenset[int]
    full: bool


def images_by_patient(images: Iterable[ImageFile]) -> dict[int, frozenset[int]]:
    """The image ids found in each patient's folder."""
    found: dict[int, set[int]] = {}
    for image in images:
        found.setdefault(image.patient_id, set()).add(image.image_id)
    return {pid: frozenset(ids) for pid, ids in found.items()}


def to_record(
    changes: ChangeSet,
    *,
    read: Iterable[int],
    found: Mapping[int, frozenset[int]],
    problem_paths: Iterable[str],
) -> Record:
    """The digests this run may record. ``read``: patients whose folders were read;
    ``found``: image ids found per patient read; ``problem_paths``: every path this run
    failed, rejected or could not list (in S3, Orthanc or retirement).

    A patient read this run keeps its new digest only when none of its paths had a problem
    and every live media row naming it had its file in the folder (a row written before
    its file must not be marked done)."""
    troubled = {pid for pid in map(patient_of_path, problem_paths) if pid is not None}
    keep: dict[int, str] = {}
    forget: set[int] = set()
    for pid in read:
        digest = changes.digests.get(pid)
        missing = changes.expected.get(pid, frozenset()) - found.get(pid, frozenset())
        if digest is None or pid in troubled or missing:
            forget.add(pid)
        else:
            keep[pid] = digest
    return Record(keep=keep, forget=frozenset(forget), full=changes.mode == FULL)
