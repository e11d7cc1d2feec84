"""Flow ``sync-clinic``: one clinic's PDATA -> S3 under images/{patientGuid}/
(docs/product-rules.md §2, §3).

Thin orchestration: each step is a task over a pure core function. Uploads are mapped over
batches (hundreds of images each), never one task run per image: see
docs/adr/0002-task-granularity.md. Large task arguments (id lists, batches) are passed in
``quote()``: they hold no futures, and Prefect would otherwise walk every element of every
one for dependency tracking (40% of a 100,000-image no-change run's CPU).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import ClinicBusyError, ConfigError
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.catalog import now
from pdata_sync.orthanc.client import Unavailable
from pdata_sync.pipeline import progress
from pdata_sync.pipeline.naming import batch_task_name, run_name
from pdata_sync.pipeline.plan import (
    SKIP_PATIENT_UNRESOLVED,
    build_plan,
    make_batches,
    resolve_patients,
)
from pdata_sync.pipeline.report import BOOKKEEPING_TASKS as BOOKKEEPING_TASKS  # tests read it here
from pdata_sync.pipeline.report import OrthancCounts, RunSummary
from pdata_sync.pipeline.retirement import SafetyLimit, source_view
from pdata_sync.source.changes import images_by_patient, to_record
from pdata_sync.source.pdata import Problem
from pdata_sync.source.sidexis_db import qualified
from pdata_sync.tasks.catalog import clinic_lock, open_catalog, prepare_catalog, recheck_content
from pdata_sync.tasks.changes import detect_changes, record_changes
from pdata_sync.tasks.resolve import resolve_card_ids
from pdata_sync.tasks.retire import retire_objects
from pdata_sync.tasks.source import check_source, lookup_media, query_patients, scan_pdata
from pdata_sync.tasks.upload import check_destination, upload_batch

# Enough threads for config.transfer.parallel_batches (max 16); the flow itself keeps the
# number of batches in flight at parallel_batches.
_TASK_RUNNER = ThreadPoolTaskRunner(max_workers=16)


def artifact_key(kind: str, clinic_id: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", clinic_id.lower()).strip("-")
    return f"{kind}-{slug}"


def clinic_run_name(kind: str = "") -> str:
    """The current flow run's name: clinic id and due time (pdata_sync.pipeline.naming)."""
    config = flow_run.parameters["config"]
    clinic_id = config["clinic_id"] if isinstance(config, dict) else config.clinic_id
    return run_name(clinic_id, flow_run.scheduled_start_time, kind)


def _problems_markdown(summary: RunSummary) -> str:
    data = summary.to_dict()
    lines = [f"# Sync of clinic {summary.clinic_id}: files not uploaded", ""]
    for label in ("failed", "rejected"):
        items = data[label]
        lines.append(f"## {label.capitalize()} ({len(items)})")
        lines.append("")
        if items:
            lines += ["| path | reason |", "|---|---|"]
            lines += [f"| `{p['path']}` | {p['reason'].replace('|', '/')} |" for p in items]
        else:
            lines.append("none")
        lines.append("")
    if data["orthanc"] is not None:
        for label in ("rejected", "failed"):
            items = data["orthanc"][label]
            if items:
                lines += [f"## {label.capitalize()} by Orthanc ({len(items)}; in S3 all the same)"]
                lines += ["", "| path | reason |", "|---|---|"]
                lines += [f"| `{p['path']}` | {p['reason'].replace('|', '/')} |" for p in items]
                lines.append("")
    for label, entries in (("Retired", data["retired"]), ("To retire", data["to_retire"])):
        if entries:
            lines += [
                f"## {label} ({len(entries)})",
                "",
                "| path | key | reason |",
                "|---|---|---|",
            ]
            lines += [f"| `{e['path']}` | `{e['key']}` | {e['reason']} |" for e in entries]
            lines.append("")
    return "\n".join(lines)


def _sync(
    config: ClinicConfig,
    summary: RunSummary,
    locked_since: datetime | None,
    full_run: bool,
    orthanc_down: Unavailable | None = None,
) -> str | None:
    """The sync itself, under the clinic's lock; returns the configuration error that
    stopped it, if any."""
    logger = get_run_logger()
    started_at = now()
    summary.interrupted_uploads_aborted = prepare_catalog(config, locked_since)

    # an incremental run reads only the folders of patients whose facts changed (ADR 0010)
    changes = detect_changes(config, full_run) if config.incremental else None
    if changes is not None:
        summary.mode, summary.full_reason = changes.mode, changes.full_reason
    # a slice of the archived files is hashed again; one that changed with its size and
    # mtime kept is read like any changed file (its patient's folder too, when incremental)
    recheck = recheck_content(config)
    summary.content_check = recheck
    if recheck.changed and changes is not None and changes.read is not None:
        changes = replace(changes, read=changes.read | recheck.patients)
    scan = scan_pdata(config, None if changes is None else quote(changes.read))
    if scan.empty_share:  # an unmounted share is not a clinic whose files were all deleted
        summary.failed.append(Problem("(pdata)", scan.empty_share))
        return None
    summary.folders = len(scan.folders)
    summary.images_found = len(scan.images)
    summary.skipped.update(scan.skipped)
    summary.rejected.extend(p for p in scan.problems if not p.environment)
    summary.failed.extend(p for p in scan.problems if p.environment)

    patient_ids = sorted({f.patient_id for f in scan.folders})
    lookup = query_patients(config, quote(patient_ids))
    summary.patients_in_database = len(patient_ids) - sum(
        1 for r in lookup.skipped.values() if r == "patients_not_in_database"
    )
    summary.skipped.update(lookup.skipped.values())

    card_ids = sorted({c for cards in lookup.card_ids.values() for c in cards})
    resolved = resolve_card_ids(config, quote(card_ids), refresh=full_run)
    summary.resolver_calls = resolved.calls
    summary.resolver_cache_hits = resolved.from_cache
    patients = resolve_patients(lookup.card_ids, resolved.mapping, resolved.failed)
    summary.skipped[SKIP_PATIENT_UNRESOLVED] += patients.unresolved
    summary.patients_resolved = len(patients.guids)

    wanted = patients.wanted(scan.images)
    no_patient_row = lookup.images_without_patient_row(scan.images)
    media = lookup_media(config, quote(patients.media_ids(wanted)), quote(no_patient_row))
    # a database that answers with empty tables for a night stops here, before any upload
    database_problem = media.check.problem(
        SafetyLimit.of(config).limit(media.check.archived),
        qualified(config.database, config.database.media_table),
        qualified(config.database, config.database.patient_table),
    )
    if database_problem:
        logger.error("clinic %s: %s", config.clinic_id, database_problem)
        summary.failed.append(Problem("(database)", database_problem))
        return None
    plan = build_plan(
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
    progress.planned(len(plan.images))

    batches = make_batches(plan.images, config.transfer.batch_size)
    summary.batches = len(batches)
    logger.info(
        "clinic %s: %d folders, %d patients resolved, %d objects in %d batches",
        config.clinic_id,
        summary.folders,
        summary.patients_resolved,
        summary.objects_planned,
        len(batches),
    )
    progress_id = create_progress_artifact(
        progress=0.0,
        key=artifact_key("sync-progress", config.clinic_id),
        description=f"Batches done of {len(batches)} for clinic {config.clinic_id}",
    )
    done = 0
    in_flight: list[PrefectFuture] = []
    queue = [
        (upload_batch.with_options(task_run_name=batch_task_name(i, len(batches))), batch)
        for i, batch in enumerate(batches, start=1)
    ]
    fatal: str | None = None
    while (queue and not fatal) or in_flight:
        while queue and not fatal and len(in_flight) < config.transfer.parallel_batches:
            task, batch = queue.pop(0)
            in_flight.append(
                task.submit(config, quote(batch), full_run, orthanc_down, quote(recheck.changed))
            )
        finished = next(as_completed(in_flight))
        in_flight.remove(finished)
        report = finished.result()
        summary.add_batch(report)
        # a wrong set-up (access denied, bucket gone) fails every image alike: stop here
        fatal = fatal or report.fatal
        done += 1
        update_progress_artifact(progress_id, progress=100.0 * done / len(batches))
    if not batches:
        update_progress_artifact(progress_id, progress=100.0)
    if fatal:
        return fatal

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
    retired = retire_objects(config, quote(view))
    summary.add_retirement(retired)
    if changes is not None and changes.tracked and not (retired.tripped or retired.fatal):
        record = to_record(
            changes,
            read=[f.patient_id for f in scan.folders],
            found=images_by_patient(scan.images),
            problem_paths=summary.problem_paths(),  # their patients are read again
        )
        summary.patients_to_read_again = len(record.forget)
        record_changes(config, changes, quote(record), started_at)
    return summary.retirement_fatal


def _write_artifacts(config: ClinicConfig, summary: RunSummary) -> None:
    create_table_artifact(
        key=artifact_key("sync-summary", config.clinic_id),
        table=summary.counts_table(),
        description=f"Sync of clinic {config.clinic_id}: counts by outcome and reason",
    )
    create_markdown_artifact(
        key=artifact_key("sync-problems", config.clinic_id),
        markdown=_problems_markdown(summary),
        description=f"Files of clinic {config.clinic_id} not uploaded, with reasons",
    )


@flow(
    name="sync-clinic",
    flow_run_name=clinic_run_name,
    task_runner=_TASK_RUNNER,
    persist_result=False,
    log_prints=False,
)
def sync_clinic(config: ClinicConfig, full_run: bool = False, new_catalog: bool = False) -> Any:
    """Copy every image of every resolvable patient of one clinic to S3.

    ``full_run``: read every patient folder (also for a clinic with incremental runs, ADR
    0010), ask the resolver for every CardId (renewing its cached answers) and list every
    patient in S3, trusting no recent confirmation: a remapped patient is seen at once
    instead of after ``resolver.cache_ttl_hours``.

    ``new_catalog``: set the worker's SQLite catalog aside (kept beside it, renamed) and
    start a new one, which trusts nothing and compares S3's contents like a new worker. Only
    for a catalog that was lost or damaged: a run refuses one cut to zero bytes or failing
    SQLite's check rather than start over silently.

    Returns the run summary (a dict). The run ends Failed (with the summary as its data)
    when any image failed; rejected bad input is reported but does not fail the run.
    """
    protect_logs()
    if full_run:
        config = config.model_copy(
            update={"transfer": config.transfer.model_copy(update={"recheck_days": 0})}
        )
    logger = get_run_logger()
    summary = RunSummary(clinic_id=config.clinic_id, flow_run_id=flow_run.get_id())

    # Configuration problems stop the run here, before any work; an Orthanc that cannot be
    # used does not: S3 is the archive of record (product-rules §12.4)
    open_catalog(config, new=new_catalog)  # a damaged or emptied catalog stops the run
    check_source(config)
    orthanc_down = check_destination(config)
    if config.orthanc is not None:
        summary.orthanc = OrthancCounts(unavailable=orthanc_down)
    try:
        with clinic_lock(config, "sync", flow_run.get_id()) as lock:
            try:
                fatal = _sync(config, summary, lock.acquired_at, full_run, orthanc_down)
            finally:  # whatever happened, the run's record says what was done
                _write_artifacts(config, summary)
    except ClinicBusyError as exc:  # refused before any work: no traceback, one line
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)

    result = summary.to_dict()
    logger.info(
        "clinic %s: uploaded %d, unchanged %d, rejected %d, failed %d",
        config.clinic_id,
        result["uploaded"],
        result["unchanged"],
        len(result["rejected"]),
        len(result["failed"]),
    )
    if result["orthanc"] is not None:
        logger.info(
            "clinic %s in Orthanc: stored %d, already stored %d, unchanged %d, rejected %d, "
            "failed %d",
            config.clinic_id,
            result["orthanc"]["stored"],
            result["orthanc"]["already_stored"],
            result["orthanc"]["unchanged"],
            len(result["orthanc"]["rejected"]),
            len(result["orthanc"]["failed"]),
        )
    if fatal:
        raise ConfigError(fatal.removeprefix("not attempted: "))
    if not summary.ok:
        failures = [f"{len(result['failed'])} image(s) failed"] if result["failed"] else []
        if orthanc_down is not None:
            failures.append(f"{orthanc_down.reason} (images in S3 only)")
        if result["orthanc"] is not None and result["orthanc"]["failed"]:
            failures.append(
                f"{len(result['orthanc']['failed'])} image(s) not stored in Orthanc (in S3)"
            )
        return Failed(message="; ".join(failures), data=result)
    return Completed(message="all images synced", data=result)
