"""Flow ``make-thumbnails``: draw the thumbnails missing for a clinic's archived images
(those archived before thumbnails existed, or while the switch was off), reading S3 only
(docs/viewer.md). An image that cannot be drawn is reported in the result and a table
artifact; the run still completes."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.archive.retrieval import validate_guid
from pdata_sync.archive.s3_client import check_bucket
from pdata_sync.archive.thumbnails import BackfillReport, backfill
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.flows.sync import artifact_key, clinic_run_name
from pdata_sync.tasks.credentials import s3_client


@task(name="backfill-thumbnails", cache_policy=NO_CACHE, persist_result=False)
def backfill_task(config: ClinicConfig, patient_guid: str | None, redo: bool) -> BackfillReport:
    client = s3_client(config.s3, config.transfer, config.timezone)
    check_bucket(client, config.s3.bucket, locked=config.s3.object_lock is not None)
    return backfill(
        client,
        config.s3,
        config.clinic_id,
        patient_guid,
        redo=redo,
        concurrency=config.transfer.upload_concurrency,
    )


def _run_name() -> str:
    return clinic_run_name("thumbnails")


@flow(name="make-thumbnails", flow_run_name=_run_name, persist_result=False)
def make_thumbnails(
    config: ClinicConfig, patient_guid: str | None = None, redo: bool = False
) -> dict[str, Any]:
    """Make every missing thumbnail of the clinic's images (one patient's with
    ``patient_guid``; all again with ``redo``)."""
    protect_logs()
    if patient_guid is not None:
        validate_guid(patient_guid)
    report = backfill_task(config, patient_guid, redo).to_dict()
    get_run_logger().info(
        "clinic %s: %d images, %d thumbnails made, %d already there, %d not made",
        config.clinic_id,
        report["images"],
        report["made"],
        report["present"],
        len(report["not_made"]),
    )
    create_table_artifact(
        key=artifact_key("thumbnails", config.clinic_id),
        table=report["not_made"] or [{"key": None, "reason": None}],
        description=(
            f"Thumbnails of clinic {config.clinic_id}: {report['made']} made, "
            f"{report['present']} already there; the images listed here could not be drawn "
            "(they are archived all the same)"
        ),
    )
    return {"clinic_id": config.clinic_id, **report}
