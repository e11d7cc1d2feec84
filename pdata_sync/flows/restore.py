"""Flow ``restore-clinic``: write a clinic's archived images back into a new folder as a
Sidexis share expects them, from S3 alone (pdata_sync.archive.restore); the catalog is not
needed. Nothing is written to PDATA: the folder may not be inside it."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.archive.restore import check_target, restore
from pdata_sync.archive.s3_client import check_bucket
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.flows.sync import artifact_key, clinic_run_name
from pdata_sync.pipeline.restore import database_locator
from pdata_sync.tasks.credentials import run_context


@task(name="restore-images", cache_policy=NO_CACHE, persist_result=False)
def restore_task(config: ClinicConfig, to: str, patient_guids: list[str]) -> dict[str, Any]:
    ctx = run_context(config)
    check_bucket(ctx.s3, config.s3.bucket)
    report = restore(
        ctx.s3,
        config.s3,
        config.clinic_id,
        to,
        pdata_root=config.pdata_root,
        patient_guids=patient_guids,
        locate=database_locator(ctx),
        concurrency=config.transfer.upload_concurrency,
    )
    return report.to_dict()


def _run_name() -> str:
    return clinic_run_name("restore")


@flow(name="restore-clinic", flow_run_name=_run_name, persist_result=False)
def restore_clinic(
    config: ClinicConfig, to: str, patient_guids: list[str] | None = None
) -> dict[str, Any]:
    """Restore the clinic's images (one or more patients' with ``patient_guids``) into the
    folder ``to`` on the worker."""
    protect_logs()
    check_target(to, config.pdata_root)  # before anything is read
    report = restore_task(config, to, list(patient_guids or []))
    get_run_logger().info(
        "clinic %s: %d objects, %d written (%d bytes), %d already there, %d by source path, "
        "%d through the database, %d unmapped, %d failed",
        config.clinic_id,
        report["objects"],
        report["written"],
        report["bytes_written"],
        report["present"],
        report["from_metadata"],
        report["from_database"],
        report["unmapped"],
        len(report["failed"]),
    )
    create_table_artifact(
        key=artifact_key("restore", config.clinic_id),
        table=report["failed"] or [{"key": None, "reason": None}],
        description=(
            f"Restore of clinic {config.clinic_id}: {report['written']} written, "
            f"{report['present']} already there, {report['unmapped']} unmapped; the objects "
            "listed here were not restored"
        ),
    )
    return {"clinic_id": config.clinic_id, **report}
