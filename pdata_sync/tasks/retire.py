"""The task that retires what no longer belongs, after a sync's uploads (docs/adr/0007)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pdata_sync.base.config import ClinicConfig
from pdata_sync.pipeline.retirement import RetireReport, SafetyLimit, SourceView, retire
from pdata_sync.tasks.catalog import clinic_images
from pdata_sync.tasks.credentials import s3_client


@task(name="retire-objects", cache_policy=NO_CACHE, persist_result=False)
def retire_objects(config: ClinicConfig, view: SourceView) -> RetireReport:
    """Move objects that no longer belong to ``retired/`` (or, with ``retire: keep``, only
    report them), unless more would go than the safety limit allows."""
    report = retire(
        clinic_images(config),
        s3_client(config.s3, config.transfer),
        config.s3.bucket,
        config.clinic_id,
        view,
        mode=config.retire,
        limit=SafetyLimit.of(config),
        flow_run_id=flow_run.get_id(),
    )
    logger = get_run_logger()
    if report.tripped:
        logger.error("clinic %s: %s", config.clinic_id, report.tripped)
    else:
        logger.info(
            "clinic %s: %d object(s) no longer belong; %s",
            config.clinic_id,
            len(report.candidates),
            f"{len(report.retired)} moved to retired/"
            if config.retire == "move"
            else "kept (retire: keep)",
        )
    return report
