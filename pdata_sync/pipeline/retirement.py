"""Retirement: which archived objects no longer belong, whether retiring them is safe (the
safety limit), and the move itself to ``retired/`` with the catalog row retired
(docs/adr/0007-identity-rules.md, "Retirement"). The decisions (:func:`source_view`,
:func:`retirements`, :class:`SafetyLimit`) are pure and tested without S3 or a database.

An object no longer belongs when the run knows why: its file is planned under other keys
(its patientGuid or name changed), its file is gone from a folder that was listed, or
Sidexis says its media row or patient was deleted. Anything the run is unsure of (a folder it
could not list, a patient whose resolution failed or is unknown, a file that failed or was
rejected this run, a conflict) keeps its objects: retiring on a guess could hide a patient's
X-ray. A retirement waits until every replacement of its file is verified.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pdata_sync.archive.retired import move_to_retired, retired_key, retirement_metadata
from pdata_sync.archive.thumbnails import delete_thumbnail
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import ErrorKind, classify, describe, s3_config_message
from pdata_sync.catalog import ACCEPTED, DRIFTED, PENDING, VERIFIED, CatalogRow, ClinicImages, now
from pdata_sync.pipeline.plan import PatientResolution, Plan
from pdata_sync.source.pdata import ImageFile, PatientFolder, Problem
from pdata_sync.source.sidexis_db import SKIP_PATIENT_DELETED, SKIP_PATIENT_NOT_IN_DB

log = logging.getLogger(__name__)

KEY_CHANGED = "replaced: the image is now stored under another key"
PATIENT_CHANGED = "replaced: the patient's CardId now resolves to another patientGuid"
FILE_GONE = "the file is gone from PDATA"
MEDIA_DELETED = "the media row was deleted in Sidexis"
PATIENT_DELETED = "the patient was deleted in Sidexis"
PATIENT_NOT_IN_DB = "the patient is no longer in the Sidexis database"

# rows that may stand for an object in S3 (a pending row's object may or may not exist:
# an interrupted run's upload can have landed; an absent object is retired as "already gone")
ARCHIVED = frozenset({PENDING, VERIFIED, ACCEPTED, DRIFTED})


@dataclass(frozen=True)
class Retirement:
    key: str
    rel_path: str
    reason: str


@dataclass(frozen=True)
class SourceView:
    """What this run knows of the source, by PDATA-relative path."""

    planned: Mapping[str, frozenset[str]]  # rel_path -> keys planned for it this run
    found: frozenset[str]  # every image file found
    listed_folders: frozenset[str]  # patient folders listed completely
    deleted: Mapping[str, str]  # rel_path -> why Sidexis no longer has it
    unsure: frozenset[str]  # failed, rejected, conflicting or unresolved this run
    # the folders an incremental run read (only their rows can be decided); None: all
    scope: frozenset[str] | None = None


def retirements(
    rows: Iterable[CatalogRow], source: SourceView, verified: frozenset[str]
) -> list[Retirement]:
    """The archived rows that no longer belong, in key order. ``verified``: keys whose rows
    are verified now (after this run's uploads)."""
    out: list[Retirement] = []
    for row in sorted(rows, key=lambda r: r.key):
        if row.state not in ARCHIVED:
            continue
        reason = _why_not_wanted(row, source, verified)
        if reason:
            out.append(Retirement(row.key, row.rel_path, reason))
    return out


def _why_not_wanted(row: CatalogRow, source: SourceView, verified: frozenset[str]) -> str:
    path = row.rel_path
    if path in source.unsure:
        return ""
    keys = source.planned.get(path)
    if keys is not None:
        if row.key in keys or not keys <= verified:
            return ""  # still wanted, or its replacement is not verified yet
        moved_patient = all(k.split("/")[1] != row.patient_guid for k in keys)
        return PATIENT_CHANGED if moved_patient else KEY_CHANGED
    if path in source.deleted:
        return source.deleted[path]
    folder = path.split("/", 1)[0]
    if path not in source.found and folder in source.listed_folders:
        return FILE_GONE
    return ""


@dataclass(frozen=True)
class SafetyLimit:
    """At most ``fraction`` of the clinic's archived objects in one run, but always
    ``floor`` (a small clinic: 5 % of 35 is 1, and one remapped patient would fail every
    run) as long as that is not half of them, and never more than ``count``: a database or
    resolver outage that makes everything look deleted must fail the run, not empty the
    archive. Without the half, a clinic of 25 images whose patient table answered empty for
    a night would have every image retired."""

    fraction: float = 0.05
    count: int = 500
    floor: int = 25

    @classmethod
    def of(cls, config: ClinicConfig) -> SafetyLimit:
        return cls(
            config.retire_max_fraction, config.retire_max_count, config.retire_always_allowed
        )

    def limit(self, archived: int) -> int:
        """The most one run may retire of a clinic with ``archived`` objects."""
        small_clinic = min(self.floor, archived // 2)
        return min(self.count, max(small_clinic, math.floor(self.fraction * archived)))

    def trips(self, candidates: int, archived: int) -> bool:
        return candidates > self.limit(archived)


def source_view(
    *,
    folders: Iterable[PatientFolder],
    images: Iterable[ImageFile],
    scan_problems: Iterable[Problem],
    patient_skipped: Mapping[int, str],
    patients: PatientResolution,
    plan: Plan,
    run_problems: Iterable[Problem],
    scope: frozenset[str] | None = None,
) -> SourceView:
    """What a sync found, as retirement needs it. ``run_problems``: every image this run
    failed or rejected (they keep their objects); ``scope``: the folders an incremental run
    read (None: a full run)."""
    images = list(images)
    scan_problems = list(scan_problems)
    planned: dict[str, set[str]] = {}
    for item in plan.images:
        planned.setdefault(item.rel_path, set()).add(item.key)
    deleted = dict.fromkeys(plan.media_deleted, MEDIA_DELETED)
    why_patient = {SKIP_PATIENT_DELETED: PATIENT_DELETED, SKIP_PATIENT_NOT_IN_DB: PATIENT_NOT_IN_DB}
    unsure = {p.path for p in scan_problems} | {p.path for p in run_problems}
    for image in images:
        reason = why_patient.get(patient_skipped.get(image.patient_id, ""))
        if reason:
            deleted[image.rel_path] = reason
        elif image.patient_id not in patients.guids:
            unsure.add(image.rel_path)  # unknown to the resolver, no CardId, or failed
    unlisted = {p.path for p in scan_problems if p.environment}
    return SourceView(
        planned={path: frozenset(keys) for path, keys in planned.items()},
        found=frozenset(i.rel_path for i in images),
        listed_folders=frozenset(f.name for f in folders) - unlisted,
        deleted=deleted,
        unsure=frozenset(unsure),
        scope=scope,
    )


@dataclass
class RetireReport:
    """What retirement did in one run. ``tripped``: the safety limit's message when it
    stopped retirement (the run fails; nothing was retired)."""

    mode: str
    candidates: list[Retirement] = field(default_factory=list)
    retired: list[Retirement] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    tripped: str | None = None
    fatal: str | None = None  # the set-up is wrong (e.g. no right to copy or delete)


def retire(
    images: ClinicImages,
    client: Any,
    bucket: str,
    clinic_id: str,
    view: SourceView,
    *,
    mode: str,
    limit: SafetyLimit,
    flow_run_id: str | None,
    at: datetime | None = None,
) -> RetireReport:
    """Retire what no longer belongs (``mode`` "move"), or only report it ("keep")."""
    # an incremental run decides only the rows of the folders it read (ADR 0010); the
    # safety limit stays relative to the whole clinic
    rows = images.rows() if view.scope is None else images.rows_in_folders(view.scope)
    verified = frozenset(r.key for r in rows if r.state == VERIFIED)
    report = RetireReport(
        mode=mode,
        candidates=retirements([r for r in rows if r.state in ARCHIVED], view, verified),
    )
    n = len(report.candidates)
    archived = images.archived_count()
    if n and limit.trips(n, archived):
        report.tripped = (
            f"retirement stopped by its safety limit: {n} object(s) no longer belong, more "
            f"than {limit.limit(archived)} ({limit.fraction:.0%} of {archived}, at least "
            f"{limit.floor} up to half, at most {limit.count}); nothing was retired. Check "
            "the Sidexis database and the resolver; for an intended large change raise "
            "retire_max_fraction for one run"
        )
        return report
    if mode != "move":
        return report
    at = at or now()
    for candidate in report.candidates:
        target = retired_key(clinic_id, candidate.key, at)
        try:
            moved = move_to_retired(
                client,
                bucket,
                candidate.key,
                target,
                retirement_metadata(candidate.reason, at, flow_run_id, candidate.key),
            )
            # the thumbnail goes with its image: nothing of it stays under a patient it
            # may not belong to (derived data; a backfill can draw it again)
            delete_thumbnail(client, bucket, candidate.key)
            if moved:
                images.retire(candidate.key, target, candidate.reason, flow_run_id)
            else:
                images.retire(candidate.key, "", f"{candidate.reason} (already gone)", flow_run_id)
        except Exception as exc:  # noqa: BLE001 - reported per object, or stops on set-up
            if classify(exc) is ErrorKind.CONFIG:
                report.fatal = s3_config_message(exc, bucket)
                break
            report.failed.append(
                Problem(candidate.rel_path, f"could not retire {candidate.key}: {describe(exc)}")
            )
            continue
        report.retired.append(candidate)
        log.info("retired %s: %s", candidate.key, candidate.reason)
    return report
