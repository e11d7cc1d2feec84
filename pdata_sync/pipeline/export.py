"""The sequence of a research export, written once (docs/research-export.md): the project's
key (refused before any work without a strong secret), the research bucket's check, the
plan (every instance of this clinic the request covers, and where it may be found), the
batches (fetch, de-identify, store; a patient's images together), the manifest.

Like a sync (pdata_sync.pipeline.runs), :func:`run_export` takes a :class:`Runner`: the
``export-research`` flow runs each step as a Prefect task and the batches as task runs;
tests run the same sequence in this process. The project's secret is read inside the
steps from the run's :class:`~pdata_sync.pipeline.context.Secrets`: it is never a
parameter, so never in the run history.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pdata_sync.archive.objects import put_derived
from pdata_sync.archive.s3_client import check_bucket
from pdata_sync.base.config import ResearchConfig
from pdata_sync.base.errors import ConfigError
from pdata_sync.catalog.orthanc import HELD
from pdata_sync.orthanc.client import warn_if_insecure
from pdata_sync.pipeline.context import RunContext, s3_client
from pdata_sync.pipeline.naming import batch_task_name
from pdata_sync.pipeline.plan import make_batches
from pdata_sync.pipeline.runs import Runner
from pdata_sync.research.deid import Deidentifier, ProjectKey, secret_problem
from pdata_sync.research.export import (
    Exporter,
    ExportItem,
    ExportOutcome,
    ExportPlan,
    ExportReport,
    ExportRequest,
    archive_listings,
    plan_export,
    project_prefix,
    validate_project,
)

RESEARCH_SECRET_ENV = "PDATA_SYNC_RESEARCH_SECRET"


def research_config(ctx: RunContext) -> ResearchConfig:
    if ctx.config.research is None:
        raise ConfigError(
            "research: the clinic's config has no research section (bucket, secret_block)"
        )
    return ctx.config.research


def research_s3(ctx: RunContext) -> Any:
    """The S3 client of the research bucket (not capped: the clinic's cap is for its
    archive's uploads)."""
    return s3_client(research_config(ctx).as_s3(), ctx.config.transfer.uncapped(), ctx.secrets)


def project_key(ctx: RunContext, project: str) -> ProjectKey:
    """The project's key: the Secret block's (or the environment's) secret with the slug."""
    cfg = research_config(ctx)
    secret = ctx.secrets.value(cfg.secret_block, "research.secret_block", RESEARCH_SECRET_ENV)
    if not secret:
        raise ConfigError(
            "research: no secret for the pseudonyms: set research.secret_block or "
            f"{RESEARCH_SECRET_ENV}"
        )
    if problem := secret_problem(secret):
        where = f"Secret block {cfg.secret_block!r}" if cfg.secret_block else RESEARCH_SECRET_ENV
        raise ConfigError(
            f"research: the secret in {where} is too weak ({problem}); make one with "
            "`pdata-sync blocks research-secret --name NAME --generate`"
        )
    return ProjectKey.of(secret, project)


def plan_research_export(ctx: RunContext, request: ExportRequest) -> ExportPlan:
    """Every instance of this clinic the request covers, with where it may be found, and
    what the request names that this clinic does not have."""
    config = ctx.config
    rows = ctx.images().archived(request.patient_guids, request.study_uids)
    guids = sorted(set(request.patient_guids) | {r["patient_guid"] for r in rows})
    listings = archive_listings(ctx.s3, config.s3.bucket, guids, config.transfer.upload_concurrency)
    orthanc_ids: dict[str, str] = {}
    if config.orthanc is not None:
        held = ctx.orthanc_records().lookup([r["key"] for r in rows])
        orthanc_ids = {
            k: r.instance_id for k, r in held.items() if r.status in HELD and r.instance_id
        }
    return plan_export(
        request, rows, listings, orthanc_ids, config.clinic_id, config.s3.key_template
    )


def export_batch(ctx: RunContext, project: str, items: list[ExportItem]) -> list[ExportOutcome]:
    """Fetch, de-identify and store one batch; one outcome per instance."""
    config = ctx.config
    exporter = Exporter(
        project,
        Deidentifier(project_key(ctx, project)),
        archive=(ctx.s3, config.s3.bucket),
        destination=(research_s3(ctx), research_config(ctx).bucket),
        pdata_root=Path(config.pdata_root),
        clinic_id=config.clinic_id,
        orthanc=ctx.orthanc,
    )
    workers = max(1, min(config.transfer.upload_concurrency, len(items)))
    with ThreadPoolExecutor(workers, thread_name_prefix="pdata-export") as pool:
        return list(pool.map(exporter.export, items))


def write_export_manifest(ctx: RunContext, project: str, report: ExportReport) -> str:
    """The manifest CSV of this run's export, next to it; returns its key. Its name is a
    time and a random token, not the run's id: the run's parameters name patientGuids,
    and a manifest findable from them would pair a patient with its pseudonym."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"{project_prefix(project)}manifests/{stamp}-{secrets.token_hex(4)}.csv"
    bucket = research_config(ctx).bucket
    put_derived(research_s3(ctx), bucket, key, report.manifest_csv(), "text/csv", None)
    return key


@dataclass
class ExportRun:
    """What an export did: its report, how many instances it planned, and the key of its
    manifest (None when nothing was exported)."""

    report: ExportReport
    planned: int
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result = self.report.to_dict()
        if self.manifest is not None:
            result["manifest"] = self.manifest
        return result


def run_export(runner: Runner, ctx: RunContext, project: str, request: ExportRequest) -> ExportRun:
    """Export the requested patients' (or studies') images of one clinic, de-identified, to
    its research bucket. A wrong project, a missing or weak secret or a research bucket
    that cannot be used is a ConfigError before any work."""
    validate_project(project)
    project_key(ctx, project)
    check_bucket(research_s3(ctx), research_config(ctx).bucket)
    warn_if_insecure(ctx.config.orthanc, ctx.log)
    plan = runner.call(plan_research_export, ctx, request)
    report = ExportReport(
        project, not_found_guids=plan.not_found_guids, not_found_studies=plan.not_found_studies
    )
    batches = make_batches(plan.items, ctx.config.transfer.batch_size)  # a patient together
    names = [batch_task_name(n, len(batches), "export") for n in range(1, len(batches) + 1)]
    futures = [
        runner.submit(export_batch, name, ctx, project, batch)
        for name, batch in zip(names, batches, strict=True)
    ]
    for future in futures:
        report.add(future.result())
    run = ExportRun(report, len(plan.items))
    if sum(report.exported.values()):
        run.manifest = runner.call(write_export_manifest, ctx, project, report)
    return run
