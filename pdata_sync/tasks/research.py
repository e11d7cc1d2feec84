"""Tasks of a research export: plan what a request covers, export one batch
(docs/research-export.md). The project's secret is read inside the tasks, from a Prefect
Secret block or the environment: it is never a parameter, so never in the run history."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pdata_sync.base.config import ClinicConfig, ResearchConfig
from pdata_sync.base.errors import ConfigError
from pdata_sync.catalog.orthanc import HELD
from pdata_sync.research.deid import Deidentifier, ProjectKey, secret_problem
from pdata_sync.research.export import (
    Exporter,
    ExportItem,
    ExportOutcome,
    ExportPlan,
    ExportRequest,
    archive_listings,
    plan_export,
)
from pdata_sync.tasks.credentials import (
    RESEARCH_SECRET_ENV,
    orthanc_client,
    research_secret,
    run_context,
    s3_client,
)


def research_config(config: ClinicConfig) -> ResearchConfig:
    if config.research is None:
        raise ConfigError(
            "research: the clinic's config has no research section (bucket, secret_block)"
        )
    return config.research


def project_key(config: ClinicConfig, project: str) -> ProjectKey:
    """The project's key: the Secret block's (or the environment's) secret with the slug."""
    cfg = research_config(config)
    secret = research_secret(cfg)
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


@task(name="plan-export", cache_policy=NO_CACHE, persist_result=False)
def plan_export_task(config: ClinicConfig, request: ExportRequest) -> ExportPlan:
    """Every instance of this clinic the request covers, with where it may be found, and
    what the request names that this clinic does not have."""
    ctx = run_context(config)
    rows = ctx.images().archived(request.patient_guids, request.study_uids)
    guids = sorted(set(request.patient_guids) | {r["patient_guid"] for r in rows})
    listings = archive_listings(
        s3_client(config.s3, config.transfer),
        config.s3.bucket,
        guids,
        config.transfer.upload_concurrency,
    )
    orthanc_ids: dict[str, str] = {}
    if config.orthanc is not None:
        records = ctx.orthanc_records()
        held = records.lookup([r["key"] for r in rows])
        orthanc_ids = {
            k: r.instance_id for k, r in held.items() if r.status in HELD and r.instance_id
        }
    return plan_export(
        request, rows, listings, orthanc_ids, config.clinic_id, config.s3.key_template
    )


@task(name="export-batch", cache_policy=NO_CACHE, persist_result=False)
def export_batch(
    config: ClinicConfig, project: str, items: list[ExportItem]
) -> list[ExportOutcome]:
    """Fetch, de-identify and store one batch; one outcome per instance."""
    research = research_config(config)
    exporter = Exporter(
        project,
        Deidentifier(project_key(config, project)),
        archive=(s3_client(config.s3, config.transfer), config.s3.bucket),
        destination=(s3_client(research.as_s3(), config.transfer), research.bucket),
        pdata_root=Path(config.pdata_root),
        clinic_id=config.clinic_id,
        orthanc=orthanc_client(config.orthanc) if config.orthanc is not None else None,
    )
    workers = max(1, min(config.transfer.upload_concurrency, len(items)))
    with ThreadPoolExecutor(workers, thread_name_prefix="pdata-export") as pool:
        return list(pool.map(exporter.export, items))
