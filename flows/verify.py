"""Flow ``verify-clinic``: re-check S3 against the image catalog, changing nothing in S3
(docs/adr/0004-catalog-and-acknowledged-uploads.md); drift it finds is recorded in the
catalog so the next sync repairs it (docs/adr/0005-trusted-no-change-runs.md). Runs in
Prefect so every audit is in the run history, with its findings as a table artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pdata_sync.config import ClinicConfig
from pdata_sync.logsafety import protect_logs
from pdata_sync.s3_store import check_bucket
from pdata_sync.verify import verify_catalog
from tasks.catalog import belongs_to_clinic, open_catalog
from tasks.credentials import s3_client

from .sync import artifact_key, clinic_run_name


@task(name="verify-catalog", cache_policy=NO_CACHE, persist_result=False)
def verify_task(config: ClinicConfig) -> dict[str, Any]:
    client = s3_client(config.s3, config.transfer)
    check_bucket(client, config.s3.bucket)
    drift = verify_catalog(
        open_catalog(config),
        client,
        config.s3.bucket,
        config.clinic_id,
        belongs_to_clinic(config),
    )
    return drift.to_dict()


def _verify_run_name() -> str:
    return clinic_run_name("verify")


@flow(name="verify-clinic", flow_run_name=_verify_run_name, persist_result=False)
def verify_clinic(config: ClinicConfig) -> dict[str, Any]:
    """Report objects missing, changed or unknown compared with the catalog."""
    protect_logs()
    result = verify_task(config)
    get_run_logger().info(
        "clinic %s: %d catalog rows, %d verified and intact, %d missing, %d changed, "
        "%d unknown, %d not yet verified",
        config.clinic_id,
        result["rows"],
        result["verified_ok"],
        len(result["missing"]),
        len(result["changed"]),
        len(result["unknown"]),
        len(result["unverified"]),
    )
    create_table_artifact(
        key=artifact_key("verify", config.clinic_id),
        table=[
            {"finding": "verified and intact", "count": result["verified_ok"]},
            {"finding": "missing in S3", "count": len(result["missing"])},
            {"finding": "changed in S3", "count": len(result["changed"])},
            {"finding": "unknown object", "count": len(result["unknown"])},
            {"finding": "not yet verified", "count": len(result["unverified"])},
        ],
        description=f"Verify of clinic {config.clinic_id} against its catalog",
    )
    return result
