"""Flow ``sync-clinic``: one clinic's PDATA -> S3 under images/{patientGuid}/
(docs/product-rules.md §2, §3).

Thin orchestration: the sequence is the core's (pdata_sync.pipeline.runs.run_sync); this
flow runs each of its steps as a Prefect task and the uploads as batches (hundreds of
images each), never one task run per image (docs/adr/0002-task-granularity.md), and keeps
the run's progress and artifacts.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    Artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import ConfigError, describe
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.catalog import now
from pdata_sync.pipeline import backfill
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.naming import clinic_resource, run_name
from pdata_sync.pipeline.report import BOOKKEEPING_TASKS as BOOKKEEPING_TASKS  # tests read it
from pdata_sync.pipeline.report import RunSummary
from pdata_sync.pipeline.runs import run_sync
from pdata_sync.tasks.credentials import run_context
from pdata_sync.tasks.steps import PrefectRunner

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


ARCHIVED_EVENT = "pdata-sync.images.archived"


def emit_archived(clinic_id: str, report: Any) -> None:
    """The Prefect event a platform can trigger on when a batch archived new images: the
    clinic as its resource, each patientGuid with a new image as a related resource, the
    counts as payload. patientGuids only: no names, no CardIds."""
    emit_event(
        event=ARCHIVED_EVENT,
        resource={"prefect.resource.id": clinic_resource(clinic_id)},
        related=[
            {
                "prefect.resource.id": f"pdata-sync.patient.{guid}",
                "prefect.resource.role": "patient",
            }
            for guid in report.patients_uploaded
        ],
        payload={
            "clinic_id": clinic_id,
            "uploaded": report.uploaded,
            "bytes": report.bytes_uploaded,
            "patients": len(report.patients_uploaded),
        },
    )


class SyncRunner(PrefectRunner):
    """The sync's steps as Prefect tasks, with the run's progress artifact (batches done)
    and, when the run ends, its summary and problems as artifacts."""

    progress_id: Any = None

    def batches_planned(self, ctx: RunContext, count: int) -> None:
        self.progress_id = create_progress_artifact(
            progress=0.0,
            key=artifact_key("sync-progress", ctx.clinic_id),
            description=f"Batches done of {count} for clinic {ctx.clinic_id}",
        )

    def batch_done(self, done: int, count: int) -> None:
        if self.progress_id is not None:
            update_progress_artifact(
                self.progress_id, progress=100.0 * done / count if count else 100.0
            )

    def batch_reported(self, ctx: RunContext, report: Any, index: int, count: int) -> None:
        super().batch_reported(ctx, report, index, count)
        if report.uploaded:  # a batch that archived nothing new tells a platform nothing
            emit_archived(ctx.clinic_id, report)

    def finished(self, ctx: RunContext, summary: RunSummary) -> None:
        _write_artifacts(ctx.config, summary)
        try:
            _write_changes(ctx)
        except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
            ctx.log.warning("the run's changes artifact was not written: %s", describe(exc))
        _write_backfill(ctx, summary)


def _write_backfill(ctx: RunContext, summary: RunSummary) -> None:
    """The clinic's backfill across nights (pdata_sync.pipeline.backfill): its table grows
    by this run's row, its progress shows the share archived."""
    key = artifact_key("backfill-nights", ctx.clinic_id)
    try:
        before = Artifact.get(key)
    except Exception as exc:  # noqa: BLE001 - the table starts again; the run goes on
        ctx.log.warning("clinic %s: backfill table not read back: %s", ctx.clinic_id, exc)
        before = None
    rows = backfill.grown(before.data if before else None, backfill.night(summary, now()))
    create_table_artifact(
        key=key,
        table=rows,
        description=f"Sync runs of clinic {ctx.clinic_id}: uploaded, archived and left",
    )
    runs = backfill.runs_not_shrinking(rows)
    if runs >= backfill.STALLED_RUNS:
        ctx.log.warning(
            "clinic %s: the backlog has not shrunk for %d sync runs", ctx.clinic_id, runs
        )
        emit_event(
            event=backfill.STALLED_EVENT,
            resource={"prefect.resource.id": clinic_resource(ctx.clinic_id)},
            payload={
                "clinic_id": ctx.clinic_id,
                "runs": runs,
                "left": rows[-1]["left"],
                "left_gb": rows[-1]["left GB"],
            },
        )
    create_progress_artifact(
        progress=backfill.percent_archived(summary),
        key=artifact_key("backfill", ctx.clinic_id),
        description=f"Clinic {ctx.clinic_id}: {backfill.headline(summary)}",
    )


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


# rows of the run's changes artifact: a first sync uploads 100,000 images, which no one reads
# in a table; the audit command has them all
CHANGES_SHOWN = 500


def _write_changes(ctx: RunContext) -> None:
    """``sync-changes-{clinic}``: which keys this run uploaded, re-uploaded and retired, with
    image ids and why (no names), re-uploads and retirements first; the audit trail per
    run in the UI. Beyond :data:`CHANGES_SHOWN` rows, the description says how to see all."""
    if ctx.run_id is None:
        return
    changes = ctx.images().run_changes(ctx.run_id)
    counts = {what: sum(c["change"] == what for c in changes)
              for what in ("uploaded", "re-uploaded", "retired")}  # fmt: skip
    more = len(changes) - CHANGES_SHOWN
    tail = (
        f"; {more} more not listed here: pdata-sync audit --flow-run {ctx.run_id}"
        if more > 0
        else ""
    )
    create_table_artifact(
        key=artifact_key("sync-changes", ctx.clinic_id),
        table=changes[:CHANGES_SHOWN]
        or [{"key": None, "image_id": None, "change": None, "reason": None}],  # fmt: skip
        description=(
            f"What this sync of clinic {ctx.clinic_id} changed in S3: "
            + ", ".join(f"{n} {what}" for what, n in counts.items())
            + tail
        ),
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
    logger = get_run_logger()
    run = run_sync(SyncRunner(), run_context(config, flow_run.get_id()), full_run, new_catalog)
    if run.busy is not None:  # refused before any work: no traceback, one line
        logger.error("%s", run.busy)
        return Failed(message=str(run.busy), data=run.busy)
    summary, orthanc_down, fatal = run.summary, run.orthanc_down, run.fatal
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
        failures = []
        if result["failed"]:
            first = result["failed"][0]
            failures.append(
                f"{len(result['failed'])} image(s) failed, first {first['path']}: {first['reason']}"
            )
        if orthanc_down is not None:
            failures.append(f"{orthanc_down.reason} (images in S3 only)")
        if result["orthanc"] is not None and result["orthanc"]["failed"]:
            failures.append(
                f"{len(result['orthanc']['failed'])} image(s) not stored in Orthanc (in S3)"
            )
        return Failed(message="; ".join(failures), data=result)
    if run.summary.window_ended:  # not a failure: the next run goes on from here
        return Completed(message=run.summary.window_ended, data=result)
    return Completed(message="all images synced", data=result)
