"""The run summary: counts by outcome and reason, and the files rejected or failed.

Contains no PHI: paths are PDATA-relative (Sidexis ids only), reasons never quote CardIds,
patient names or birth dates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pdata_sync.orthanc.client import Unavailable
from pdata_sync.orthanc.store import (
    O_ALREADY_STORED,
    O_FAILED,
    O_REJECTED,
    O_STORED,
    O_UNCHANGED,
    OrthancOutcome,
)
from pdata_sync.pipeline.recheck import Recheck
from pdata_sync.pipeline.retirement import RetireReport
from pdata_sync.pipeline.uploader import FAILED, LEFT, REJECTED, UNCHANGED, UPLOADED, Outcome
from pdata_sync.source.pdata import Problem

# Task runs of a sync besides its upload-batch runs: check-source, check-destinations,
# abort-interrupted-uploads, recheck-content, scan-pdata, query-patients, resolve-card-ids,
# lookup-media, retire-objects (pdata_sync/flows/sync.py; the history of a run must hold
# exactly these + batches). A clinic with incremental runs adds detect-changes and record-changes
# (INCREMENTAL_TASKS).
BOOKKEEPING_TASKS = 9
INCREMENTAL_TASKS = 2


def _dedupe(problems: Iterable[Problem]) -> list[dict[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for p in problems:
        seen.setdefault((p.path, p.reason), None)
    return [{"path": path, "reason": reason} for path, reason in sorted(seen)]


# reasons of the sync-summary table's rows that the fleet report reads (pdata_sync.fleet.report)
BYTES = "bytes"
IMAGES_AFTER = "images in S3 after the run"
BYTES_AFTER = "bytes in S3 after the run"
BACKLOG_IMAGES = "images not archived yet (failed included)"
BACKLOG_BYTES = "bytes left at the window's end"


@dataclass
class OrthancCounts:
    """What became of the images in Orthanc (the second destination)."""

    stored: int = 0
    already_stored: int = 0
    unchanged: int = 0  # recorded as held with the same content: not sent
    rejected: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    unavailable: Unavailable | None = None  # Orthanc could not be used this run: why

    @classmethod
    def of(cls, outcomes: Iterable[OrthancOutcome]) -> OrthancCounts:
        outcomes = list(outcomes)
        return cls(
            stored=sum(o.status == O_STORED for o in outcomes),
            already_stored=sum(o.status == O_ALREADY_STORED for o in outcomes),
            unchanged=sum(o.status == O_UNCHANGED for o in outcomes),
            rejected=[Problem(o.path, o.reason) for o in outcomes if o.status == O_REJECTED],
            failed=[Problem(o.path, o.reason) for o in outcomes if o.status == O_FAILED],
        )

    def add(self, other: OrthancCounts) -> None:
        self.stored += other.stored
        self.already_stored += other.already_stored
        self.unchanged += other.unchanged
        self.rejected.extend(other.rejected)
        self.failed.extend(other.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "already_stored": self.already_stored,
            "unchanged": self.unchanged,
            "rejected": _dedupe(self.rejected),
            "failed": _dedupe(self.failed),
            "unavailable": None
            if self.unavailable is None
            else {"reason": self.unavailable.reason, "config": self.unavailable.config},
        }


@dataclass(frozen=True)
class BatchReport:
    """What a run needs to know of one upload batch: counts and the problems.

    An upload task returns this rather than one object per image: Prefect links every
    element of a task's result to its state, which for 500 outcomes per batch cost more
    CPU than a no-change batch's own work."""

    uploaded: int = 0
    unchanged: int = 0
    unchanged_by_catalog: int = 0
    bytes_uploaded: int = 0
    rejected: tuple[Problem, ...] = ()
    failed: tuple[Problem, ...] = ()
    notes: tuple[Problem, ...] = ()  # archived, but worth telling (e.g. pixel data cut short)
    fatal: str | None = None  # the first reason the set-up is wrong; the run must stop
    thumbnails_made: int = 0
    thumbnails_not_made: tuple[Problem, ...] = ()
    orthanc: OrthancCounts | None = None  # None: the clinic has no Orthanc
    header_patient_id_empty: int = 0  # files read whose PatientID is empty (accepted)
    left: int = 0  # not started: the run's window ended
    bytes_left: int = 0
    # the patientGuids with an image uploaded in this batch (what a platform acts on)
    patients_uploaded: tuple[str, ...] = ()

    def line(self, index: int, count: int) -> str:
        """One line for the run's log: ``batch 3/8: 50 images, 2 uploaded, 48 unchanged``."""
        images = self.uploaded + self.unchanged + len(self.rejected) + len(self.failed)
        images += self.left
        parts = [f"{self.uploaded} uploaded", f"{self.unchanged} unchanged"]
        others = ((len(self.rejected), "rejected"), (len(self.failed), "failed"),
                  (self.left, "left for the next run"))  # fmt: skip
        parts += [f"{n} {what}" for n, what in others if n]
        return f"batch {index}/{count}: {images} images, {', '.join(parts)}"

    @classmethod
    def of(
        cls, outcomes: Iterable[Outcome], orthanc: Iterable[OrthancOutcome] | None = None
    ) -> BatchReport:
        outcomes = list(outcomes)
        return cls(
            orthanc=None if orthanc is None else OrthancCounts.of(orthanc),
            uploaded=sum(o.status == UPLOADED for o in outcomes),
            unchanged=sum(o.status == UNCHANGED for o in outcomes),
            unchanged_by_catalog=sum(o.status == UNCHANGED and o.trusted for o in outcomes),
            bytes_uploaded=sum(o.bytes for o in outcomes if o.status == UPLOADED),
            rejected=tuple(Problem(o.path, o.reason) for o in outcomes if o.status == REJECTED),
            failed=tuple(Problem(o.path, o.reason) for o in outcomes if o.status == FAILED),
            notes=tuple(Problem(o.path, o.note) for o in outcomes if o.note),
            fatal=next((o.reason for o in outcomes if o.fatal), None),
            thumbnails_made=sum(o.thumbnail == "made" for o in outcomes),
            thumbnails_not_made=tuple(
                Problem(o.path, o.thumbnail) for o in outcomes if o.thumbnail not in ("", "made")
            ),
            header_patient_id_empty=len({o.path for o in outcomes if o.header_id_empty}),
            left=sum(o.status == LEFT for o in outcomes),
            bytes_left=sum(o.bytes for o in outcomes if o.status == LEFT),
            patients_uploaded=tuple(
                sorted({o.key.split("/")[1] for o in outcomes if o.status == UPLOADED and o.key})
            ),
        )


@dataclass
class RunSummary:
    """Everything a run reports; :meth:`to_dict` is the CLI's JSON and the artifacts' source."""

    clinic_id: str
    flow_run_id: str | None = None
    folders: int = 0
    patients_in_database: int = 0
    patients_resolved: int = 0
    images_found: int = 0
    objects_planned: int = 0
    uploaded: int = 0
    unchanged: int = 0
    unchanged_by_catalog: int = 0  # of unchanged: vouched for by the catalog, S3 not asked
    bytes_uploaded: int = 0
    left: int = 0  # images not started before the run's window ended (transfer.stop_at)
    bytes_left: int = 0
    window_ended: str = ""  # "stopped at the end of its window: ...", when it did
    upload_seconds: float = 0.0  # from the first batch submitted to the last one done
    archived_images: int = 0  # after the run: objects S3 confirmed in this destination
    archived_bytes: int = 0
    batches: int = 0
    resolver_calls: int = 0
    resolver_cache_hits: int = 0
    interrupted_uploads_aborted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    retire_mode: str = "move"
    # objects that no longer belong: moved to retired/ (retire: move) or only reported
    retired: list[dict[str, str]] = field(default_factory=list)
    to_retire: list[dict[str, str]] = field(default_factory=list)
    retirement_fatal: str | None = None
    thumbnails_made: int = 0
    thumbnails_not_made: list[Problem] = field(default_factory=list)
    orthanc: OrthancCounts | None = None  # None: the clinic has no Orthanc
    mode: str = "full"  # or "incremental" (docs/adr/0010)
    full_reason: str = ""  # why this run read every folder
    patients_to_read_again: int = 0  # read this run, not recorded as done (incremental)
    header_patient_id_empty: int = 0  # files read whose own PatientID is empty (accepted)
    content_check: Recheck = field(default_factory=Recheck)  # the rolling content check

    def add_retirement(self, report: RetireReport) -> None:
        self.retire_mode = report.mode
        done = {r.key for r in report.retired}
        entries = [
            {"path": c.rel_path, "key": c.key, "reason": c.reason} for c in report.candidates
        ]
        self.retired = [e for e in entries if e["key"] in done]
        self.to_retire = [e for e in entries if e["key"] not in done]
        self.failed.extend(report.failed)
        if report.tripped:
            self.failed.append(Problem("(retirement)", report.tripped))
        self.retirement_fatal = report.fatal

    def add_batch(self, report: BatchReport) -> None:
        self.uploaded += report.uploaded
        self.bytes_uploaded += report.bytes_uploaded
        self.unchanged += report.unchanged
        self.unchanged_by_catalog += report.unchanged_by_catalog
        self.rejected.extend(report.rejected)
        self.failed.extend(report.failed)
        self.notes.extend(report.notes)
        self.thumbnails_made += report.thumbnails_made
        self.header_patient_id_empty += report.header_patient_id_empty
        self.left += report.left
        self.bytes_left += report.bytes_left
        self.thumbnails_not_made.extend(report.thumbnails_not_made)
        if report.orthanc is not None:
            if self.orthanc is None:
                self.orthanc = OrthancCounts()
            self.orthanc.add(report.orthanc)

    def backlog(self) -> dict[str, Any]:
        """Where a backfill stands after this run: what is not archived yet (the images left
        at the window's end and those that failed; bytes: of those left), the rate this run
        achieved, and how many more runs like it the images left need at that rate."""
        seconds = self.upload_seconds
        rate = None
        if seconds > 0 and self.uploaded:
            rate = {
                "mbit_per_s": round(self.bytes_uploaded * 8 / 1e6 / seconds, 2),
                "images_per_s": round(self.uploaded / seconds, 2),
            }
        runs_left = -(-self.bytes_left // self.bytes_uploaded) if self.bytes_uploaded else None
        whole = self.archived_bytes + self.bytes_left
        return {
            "archived": {
                "images": self.archived_images,
                "bytes": self.archived_bytes,
                # of the bytes known: archived, and left at the window's end
                "percent": round(100.0 * self.archived_bytes / whole, 1) if whole else None,
            },
            "backlog": {
                "images": self.left + len({p.path for p in self.failed}),
                "bytes": self.bytes_left,
            },
            "rate": rate,
            "runs_left": runs_left if self.left else 0,
        }

    def outcomes(self) -> dict[str, list[dict[str, str]]]:
        """``failed``, ``rejected`` and ``notes``, each path under one of them only: a path
        that failed is not also rejected, and one that failed or was rejected has no note
        (notes are about archived images, e.g. a plan's "uploaded under the fallback name"
        for a file that then turned out empty)."""
        failed = _dedupe(self.failed)
        seen = {p["path"] for p in failed}
        rejected = [p for p in _dedupe(self.rejected) if p["path"] not in seen]
        seen |= {p["path"] for p in rejected}
        notes = [p for p in _dedupe(self.notes) if p["path"] not in seen]
        return {"failed": failed, "rejected": rejected, "notes": notes}

    def problem_paths(self) -> list[str]:
        """Every path this run failed, rejected or could not list (the share's problems
        are among them), in S3 or in Orthanc."""
        problems = [*self.failed, *self.rejected]
        if self.orthanc is not None:
            problems += [*self.orthanc.failed, *self.orthanc.rejected]
        return [p.path for p in problems]

    @property
    def ok(self) -> bool:
        """True when nothing failed, in S3 or in Orthanc (rejected bad input is reported,
        not a failure)."""
        orthanc = self.orthanc
        return not self.failed and not (orthanc and (orthanc.failed or orthanc.unavailable))

    def to_dict(self) -> dict[str, Any]:
        outcomes = self.outcomes()
        return {
            "clinic_id": self.clinic_id,
            "flow_run_id": self.flow_run_id,
            "ok": self.ok,
            "mode": self.mode,
            "full_reason": self.full_reason,
            "folders": self.folders,
            "patients_in_database": self.patients_in_database,
            "patients_resolved": self.patients_resolved,
            "images_found": self.images_found,
            "objects_planned": self.objects_planned,
            "uploaded": self.uploaded,
            "unchanged": self.unchanged,
            "unchanged_by_catalog": self.unchanged_by_catalog,
            "bytes_uploaded": self.bytes_uploaded,
            "left": {"images": self.left, "bytes": self.bytes_left},
            **self.backlog(),
            "window_ended": self.window_ended,
            "batches": self.batches,
            "resolver_calls": self.resolver_calls,
            "resolver_cache_hits": self.resolver_cache_hits,
            "interrupted_uploads_aborted": self.interrupted_uploads_aborted,
            "skipped": dict(sorted(self.skipped.items())),
            "rejected": outcomes["rejected"],
            "failed": outcomes["failed"],
            "notes": outcomes["notes"],
            "retired": self.retired,
            "to_retire": self.to_retire,
            "thumbnails": {
                "made": self.thumbnails_made,
                "not_made": _dedupe(self.thumbnails_not_made),
            },
            "orthanc": None if self.orthanc is None else self.orthanc.to_dict(),
            "patients_to_read_again": self.patients_to_read_again,
            "header_patient_id_empty": self.header_patient_id_empty,
            "content_check": self.content_check.to_dict(),
        }

    def counts_table(self) -> list[dict[str, Any]]:
        """Rows of (outcome, reason, count) for a table artifact."""
        listed = (
            "patient folders read (full run: " + self.full_reason + ")"
            if self.mode == "full" and self.full_reason
            else f"patient folders read ({self.mode} run)"
        )
        rows: list[dict[str, Any]] = [
            {"outcome": "folders", "reason": listed, "count": self.folders},
            {
                "outcome": "resolved",
                "reason": "patients with a patientGuid",
                "count": self.patients_resolved,
            },
            {"outcome": "uploaded", "reason": "", "count": self.uploaded},
            {"outcome": "uploaded", "reason": BYTES, "count": self.bytes_uploaded},
            {"outcome": "unchanged", "reason": "already in S3", "count": self.unchanged},
            {
                "outcome": "unchanged",
                "reason": "of which vouched for by the catalog (S3 confirmed them within "
                "transfer.recheck_days; not asked again)",
                "count": self.unchanged_by_catalog,
            },
            {"outcome": "batches", "reason": "upload task runs", "count": self.batches},
            {
                "outcome": "content check",
                "reason": "archived files hashed again (transfer.rehash_days)",
                "count": self.content_check.files,
            },
            {
                "outcome": "content check",
                "reason": "changed although size and mtime did not (uploaded again)",
                "count": len(self.content_check.changed),
            },
            {
                "outcome": "thumbnails",
                "reason": "made for new images",
                "count": self.thumbnails_made,
            },
            {
                "outcome": "thumbnails",
                "reason": "not made (image archived all the same; see the summary)",
                "count": len(self.thumbnails_not_made),
            },
            {"outcome": "retired", "reason": "moved to retired/", "count": len(self.retired)},
            {
                "outcome": "to retire",
                "reason": "no longer belong, not moved (retire: keep, the safety limit, or "
                "an error)",
                "count": len(self.to_retire),
            },
        ]
        if self.orthanc is not None:
            o = self.orthanc
            rows += [
                {"outcome": "orthanc", "reason": "stored (new in Orthanc)", "count": o.stored},
                {
                    "outcome": "orthanc",
                    "reason": "already stored (Orthanc had it)",
                    "count": o.already_stored,
                },
                {
                    "outcome": "orthanc",
                    "reason": "unchanged (recorded as held; not sent)",
                    "count": o.unchanged,
                },
                {"outcome": "orthanc", "reason": "rejected by Orthanc", "count": len(o.rejected)},
                {
                    "outcome": "orthanc",
                    "reason": "failed (in S3; Orthanc is tried again next run)",
                    "count": len(o.failed),
                },
            ]
        backlog = self.backlog()["backlog"]
        rows += [
            {"outcome": "archived", "reason": IMAGES_AFTER, "count": self.archived_images},
            {"outcome": "archived", "reason": BYTES_AFTER, "count": self.archived_bytes},
            {"outcome": "backlog", "reason": BACKLOG_IMAGES, "count": backlog["images"]},
            {"outcome": "backlog", "reason": BACKLOG_BYTES, "count": backlog["bytes"]},
        ]
        rows += [
            {"outcome": "skipped", "reason": r, "count": n} for r, n in sorted(self.skipped.items())
        ]
        outcomes = self.outcomes()
        for label in ("rejected", "failed"):
            reasons = Counter(p["reason"] for p in outcomes[label])
            rows += [
                {"outcome": label, "reason": r, "count": n} for r, n in sorted(reasons.items())
            ]
        return rows
