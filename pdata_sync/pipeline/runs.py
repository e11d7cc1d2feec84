"""The sequences of a sync and a verify, written once. A sync: checks, the clinic's lock,
changes, the rolling content check, scan, patients, resolver, media, plan, upload batches,
retirement, incremental marks (docs/product-rules.md §2, §3).

:func:`run_sync` takes a :class:`Runner` that says how each step runs. This module's
:class:`Runner` calls the step functions (pdata_sync.pipeline.steps) in this process, with
the upload batches on a thread pool: the model-based test and the unit tests run the
product's sequence this way. The ``sync-clinic`` flow passes a runner that runs every step
as a Prefect task, the batches as submitted task runs, and keeps the run's progress and
artifacts (pdata_sync.flows.sync).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pdata_sync.base.errors import ClinicBusyError, describe
from pdata_sync.catalog import now
from pdata_sync.pipeline import progress, steps
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.naming import batch_task_name
from pdata_sync.pipeline.plan import (
    SKIP_PATIENT_UNRESOLVED,
    Plan,
    build_plan,
    make_batches,
    resolve_patients,
)
from pdata_sync.pipeline.report import OrthancCounts, RunSummary
from pdata_sync.pipeline.retirement import SafetyLimit, source_view
from pdata_sync.pipeline.verify import Drift
from pdata_sync.source.changes import images_by_patient, to_record
from pdata_sync.source.pdata import Problem
from pdata_sync.source.sidexis_db import qualified


class Runner:
    """Runs the steps here and now; the upload batches on a pool of threads. Subclasses
    change how (Prefect task runs), never what or in which order."""

    def call(self, step: Callable[..., Any], *args: Any) -> Any:
        return step(*args)

    def submit(self, step: Callable[..., Any], name: str, *args: Any) -> Any:
        """Start ``step`` (an upload batch called ``name``); returns a future."""
        return self._pool().submit(step, *args)

    def first_done(self, futures: list[Any]) -> Any:
        """One of ``futures`` that has finished (waiting for one if none has)."""
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return next(f for f in futures if f in done)

    def slot(self, ctx: RunContext) -> contextlib.AbstractContextManager[None]:
        """Held around the clinic's lock (a deployment's shared concurrency slot)."""
        return contextlib.nullcontext()

    def batches_planned(self, ctx: RunContext, count: int) -> None:
        """The run will upload ``count`` batches."""

    def batch_done(self, done: int, count: int) -> None:
        """``done`` of ``count`` batches are finished."""

    def batch_reported(self, ctx: RunContext, report: Any, index: int, count: int) -> None:
        """Batch ``index`` of ``count`` ended with ``report`` (a BatchReport): one line in
        the run's log."""
        ctx.log.info("%s", report.line(index, count))

    def finished(self, ctx: RunContext, summary: RunSummary) -> None:
        """The run's record is complete (called under the lock, also after an error)."""

    _executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="batch")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


@dataclass
class SyncRun:
    """What a sync did: its summary (the report and the CLI's JSON), what it planned, why it
    stopped early (``fatal``: a wrong set-up; ``stopped``: the database check or an empty
    share), and Orthanc's state."""

    summary: RunSummary
    plan: Plan | None = None
    fatal: str | None = None
    stopped: str = ""
    orthanc_down: Any = None
    busy: ClinicBusyError | None = None  # refused: another run holds the clinic's lock


def run_sync(
    runner: Runner, ctx: RunContext, full_run: bool = False, new_catalog: bool = False
) -> SyncRun:
    """Sync one clinic: checks, then everything else under the clinic's lock. A run
    refused by the lock returns with ``busy`` set, before any work."""
    if full_run:  # every patient listed in S3, trusting no recent confirmation
        transfer = ctx.config.transfer.model_copy(update={"recheck_days": 0})
        ctx = ctx.with_config(ctx.config.model_copy(update={"transfer": transfer}))
    ctx.deadline = ctx.config.transfer.deadline(now(), ctx.config.timezone)
    run = SyncRun(RunSummary(clinic_id=ctx.clinic_id, flow_run_id=ctx.run_id))
    # Configuration problems stop the run here, before any work; an Orthanc that cannot be
    # used does not: S3 is the archive of record (product-rules §12.4)
    ctx.open_catalog(new=new_catalog)  # a damaged or emptied catalog stops the run
    runner.call(steps.check_source, ctx)
    run.orthanc_down = runner.call(steps.check_destinations, ctx)
    if ctx.config.orthanc is not None:
        run.summary.orthanc = OrthancCounts(unavailable=run.orthanc_down)
    try:
        with runner.slot(ctx), clinic_lock(ctx, "sync") as lock:
            try:
                run.fatal = _sync(runner, ctx, run, lock.acquired_at, full_run)
            finally:  # whatever happened, the run's record says what was done
                _count_archived(ctx, run.summary)
                runner.finished(ctx, run.summary)
    except ClinicBusyError as exc:
        run.busy = exc
    return run


def _count_archived(ctx: RunContext, summary: RunSummary) -> None:
    """What the archive holds after the run, for the backfill's progress (0 when the
    catalog cannot say: the run's own outcome is reported all the same)."""
    try:
        summary.archived_images, summary.archived_bytes = ctx.images().verified_totals()
    except Exception as exc:  # noqa: BLE001 - a report, never the run's failure
        ctx.log.warning("clinic %s: archive totals not read: %s", ctx.clinic_id, describe(exc))


@contextlib.contextmanager
def clinic_lock(ctx: RunContext, purpose: str) -> Iterator[Any]:
    """Hold the clinic's lock (or raise ClinicBusyError naming the holder); the catalog
    file alone holds what the run recorded when it ends."""
    catalog = ctx.catalog
    with catalog.lock(ctx.clinic_id, purpose, ctx.run_id) as lock:
        if lock.taken_over is not None:
            ctx.log.warning(
                "clinic %s: took over the lock of a run that is gone (%s)",
                ctx.clinic_id,
                lock.taken_over.describe(),
            )
        try:
            yield lock
        finally:
            try:
                catalog.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the log keeps it; a later run copies it
                ctx.log.warning("catalog: checkpoint not written: %s", describe(exc))


def _sync(
    runner: Runner, ctx: RunContext, run: SyncRun, locked_since: Any, full_run: bool
) -> str | None:
    """The sync itself, under the clinic's lock; returns the configuration error that
    stopped it, if any."""
    config, summary, call = ctx.config, run.summary, runner.call
    started_at = now()
    summary.interrupted_uploads_aborted = call(steps.abort_interrupted, ctx, locked_since)

    # an incremental run reads only the folders of patients whose facts changed (ADR 0010)
    changes = call(steps.detect_changes, ctx, full_run) if config.incremental else None
    if changes is not None:
        summary.mode, summary.full_reason = changes.mode, changes.full_reason
    # a slice of the archived files is hashed again; one that changed with its size and
    # mtime kept is read like any changed file (its patient's folder too, when incremental)
    recheck = call(steps.recheck_content, ctx)
    summary.content_check = recheck
    if recheck.changed and changes is not None and changes.read is not None:
        changes = replace(changes, read=changes.read | recheck.patients)
    scan = call(steps.scan_pdata, ctx, None if changes is None else changes.read)
    if scan.empty_share:  # an unmounted share is not a clinic whose files were all deleted
        summary.failed.append(Problem("(pdata)", scan.empty_share))
        run.stopped = scan.empty_share
        return None
    summary.folders = len(scan.folders)
    summary.images_found = len(scan.images)
    summary.skipped.update(scan.skipped)
    summary.rejected.extend(p for p in scan.problems if not p.environment)
    summary.failed.extend(p for p in scan.problems if p.environment)

    patient_ids = sorted({f.patient_id for f in scan.folders})
    lookup = call(steps.query_patients, ctx, patient_ids)
    summary.patients_in_database = len(patient_ids) - sum(
        1 for r in lookup.skipped.values() if r == "patients_not_in_database"
    )
    summary.skipped.update(lookup.skipped.values())

    card_ids = sorted({c for cards in lookup.card_ids.values() for c in cards})
    resolved = call(steps.resolve_card_ids, ctx, card_ids, full_run)
    summary.resolver_calls = resolved.calls
    summary.resolver_cache_hits = resolved.from_cache
    patients = resolve_patients(lookup.card_ids, resolved.mapping, resolved.failed)
    summary.skipped[SKIP_PATIENT_UNRESOLVED] += patients.unresolved
    summary.patients_resolved = len(patients.guids)

    wanted = patients.wanted(scan.images)
    no_patient_row = lookup.images_without_patient_row(scan.images)
    media = call(steps.lookup_media, ctx, patients.media_ids(wanted), no_patient_row)
    # a database that answers with empty tables for a night stops here, before any upload
    database_problem = media.check.problem(
        SafetyLimit.of(config).limit(media.check.archived),
        qualified(config.database, config.database.media_table),
        qualified(config.database, config.database.patient_table),
    )
    if database_problem:
        ctx.log.error("clinic %s: %s", config.clinic_id, database_problem)
        summary.failed.append(Problem("(database)", database_problem))
        run.stopped = database_problem
        return None
    plan = run.plan = build_plan(
        images=wanted,
        patient_guids=patients.guids,
        failed_patients=patients.failed,
        media=media.rows,
        clinic_id=config.clinic_id,
        key_template=config.s3.key_template,
        archived_names=media.check.media,
        card_ids=lookup.card_ids,
        header_rule=config.database.header_patient_id,
    )
    summary.skipped.update(plan.skipped)
    summary.notes.extend(plan.notes)
    summary.failed.extend(plan.failed)
    summary.objects_planned = len(plan.images)
    progress.planned(len(plan.images), ctx.deadline)

    batches = make_batches(plan.images, config.transfer.batch_size)
    summary.batches = len(batches)
    ctx.log.info(
        "clinic %s: %d folders, %d patients resolved, %d objects in %d batches",
        config.clinic_id,
        summary.folders,
        summary.patients_resolved,
        summary.objects_planned,
        len(batches),
    )
    fatal = _upload(runner, ctx, run, batches, full_run, recheck.changed)
    if fatal:
        return fatal
    if summary.left:  # the window ended: retirement and the marks wait for a whole run
        summary.window_ended = run.stopped = (
            f"stopped at the end of its window: {summary.left} images "
            f"({summary.bytes_left / 1e6:,.1f} MB) left"
        )
        ctx.log.warning("clinic %s: %s", config.clinic_id, summary.window_ended)
        return None

    # what no longer belongs leaves images/, only after this run's uploads are verified
    view = source_view(
        folders=scan.folders,
        images=scan.images,
        scan_problems=scan.problems,
        patient_skipped=lookup.skipped,
        patients=patients,
        plan=plan,
        run_problems=[*summary.failed, *summary.rejected],
        scope=None
        if changes is None or changes.read is None
        else frozenset(f.name for f in scan.folders),
    )
    retired = call(steps.retire_objects, ctx, view)
    summary.add_retirement(retired)
    if changes is not None and changes.tracked and not (retired.tripped or retired.fatal):
        record = to_record(
            changes,
            read=[f.patient_id for f in scan.folders],
            found=images_by_patient(scan.images),
            problem_paths=summary.problem_paths(),  # their patients are read again
        )
        summary.patients_to_read_again = len(record.forget)
        call(steps.record_changes, ctx, changes, record, started_at)
    return summary.retirement_fatal


def _upload(
    runner: Runner,
    ctx: RunContext,
    run: SyncRun,
    batches: list[Any],
    full_run: bool,
    reread: frozenset[str],
) -> str | None:
    """The batches, at most ``transfer.parallel_batches`` in flight; a wrong set-up (access
    denied, bucket gone) fails every image alike, so none is started after one says so."""
    runner.batches_planned(ctx, len(batches))
    started = time.monotonic()
    queue = list(enumerate(batches, start=1))
    in_flight: list[Any] = []
    numbers: list[int] = []  # the batch number of each in flight, in the same order
    done, fatal = 0, None
    while (queue and not fatal) or in_flight:
        if queue and ctx.deadline is not None and now() >= ctx.deadline:
            _leave(ctx, run.summary, [image for _, batch in queue for image in batch])
            done += len(queue)
            queue.clear()
            runner.batch_done(done, len(batches))
            if not in_flight:
                break
        while queue and not fatal and len(in_flight) < ctx.config.transfer.parallel_batches:
            index, batch = queue.pop(0)
            name = batch_task_name(index, len(batches))
            in_flight.append(
                runner.submit(
                    steps.upload_batch, name, ctx, batch, full_run, run.orthanc_down, reread
                )
            )
            numbers.append(index)
        finished = runner.first_done(in_flight)
        index = in_flight.index(finished)
        in_flight.remove(finished)
        report = finished.result()
        run.summary.add_batch(report)
        runner.batch_reported(ctx, report, numbers.pop(index), len(batches))
        fatal = fatal or report.fatal
        done += 1
        runner.batch_done(done, len(batches))
    if not batches:
        runner.batch_done(0, 0)
    run.summary.upload_seconds = time.monotonic() - started
    return fatal


def _leave(ctx: RunContext, summary: RunSummary, images: list[Any]) -> None:
    """Count what a run whose window ended did not start: the images, and their files'
    bytes as they are now (a file gone counts none)."""
    root = Path(ctx.config.pdata_root)
    summary.left += len(images)
    for image in images:
        with contextlib.suppress(OSError):
            summary.bytes_left += (root / image.rel_path).stat().st_size


def run_verify(runner: Runner, ctx: RunContext) -> tuple[Drift | None, ClinicBusyError | None]:
    """Verify one clinic under its lock: (the drift found, None), or (None, why the lock
    refused the run, before any work)."""
    try:
        with runner.slot(ctx), clinic_lock(ctx, "verify"):
            return runner.call(steps.verify_clinic, ctx), None
    except ClinicBusyError as exc:
        return None, exc
