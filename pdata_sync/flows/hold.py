"""Flow ``legal-hold``: set or clear a legal hold on every version of one patient's objects
in a clinic's bucket (pdata_sync.archive.legal_hold). The run is the record in Prefect's
history; each of the patient's images gets a catalog event (``legal_hold_on`` / ``legal_hold_off``).
Only on a bucket with Object Lock: refused otherwise, before anything is asked of S3."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.archive.legal_hold import set_legal_hold
from pdata_sync.archive.retrieval import validate_guid
from pdata_sync.archive.s3_client import check_bucket
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.flows.sync import clinic_run_name
from pdata_sync.tasks.credentials import run_context


@task(name="set-legal-hold", cache_policy=NO_CACHE, persist_result=False)
def hold_task(config: ClinicConfig, patient_guid: str, on: bool) -> dict[str, Any]:
    ctx = run_context(config, flow_run.get_id())
    check_bucket(ctx.s3, config.s3.bucket, locked=True)
    report = set_legal_hold(
        ctx.s3,
        config.s3,
        config.clinic_id,
        patient_guid,
        on=on,
        concurrency=config.transfer.upload_concurrency,
    )
    ctx.images().record_hold(report.images, report.status, ctx.run_id)
    return report.to_dict()


def _run_name() -> str:
    return clinic_run_name("hold")


@flow(name="legal-hold", flow_run_name=_run_name, persist_result=False)
def legal_hold(config: ClinicConfig, patient_guid: str, on: bool = True) -> dict[str, Any]:
    """Set (``on``) or clear the legal hold of every version of the patient's objects."""
    protect_logs()
    guid = validate_guid(patient_guid)
    report = hold_task(config, guid, on)
    get_run_logger().info(
        "clinic %s: legal hold %s on %d version(s) of %d image(s) of patient %s, %d failed",
        config.clinic_id,
        report["status"],
        report["versions"],
        len(report["images"]),
        guid,
        len(report["failed"]),
    )
    return {"clinic_id": config.clinic_id, **report}
