"""Flow ``verify-clinic``: re-check S3 against the image catalog, changing nothing in S3
(docs/adr/0004-catalog-and-acknowledged-uploads.md); drift it finds is recorded in the
catalog so the next sync repairs it (docs/adr/0005-trusted-no-change-runs.md). Runs in
Prefect so every audit is in the run history: a run that finds drift ends Failed, with the
findings as its data and a table artifact of every object that differs."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.archive.s3_store import check_bucket
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import ClinicBusyError
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.flows.sync import artifact_key, clinic_run_name
from pdata_sync.pipeline.verify import Drift, verify_catalog, verify_orthanc
from pdata_sync.source.changes import patient_of_path
from pdata_sync.tasks.catalog import belongs_to_clinic, clinic_images, clinic_lock, open_catalog
from pdata_sync.tasks.changes import clinic_marks
from pdata_sync.tasks.credentials import orthanc_client, s3_client, warn_if_insecure


@task(name="verify-catalog", cache_policy=NO_CACHE, persist_result=False)
def verify_task(config: ClinicConfig) -> Drift:
    # an audit starts with the catalog's own file: SQLite's thorough check (0.4 s for
    # 100,000 rows; a sync runs the quick one)
    open_catalog(config).check_integrity(thorough=True)
    client = s3_client(config.s3, config.transfer)
    check_bucket(client, config.s3.bucket)
    orthanc = orthanc_client(config.orthanc) if config.orthanc is not None else None
    if orthanc is not None:
        warn_if_insecure(config.orthanc, get_run_logger())
        orthanc.check()  # unreachable or refused: before any work
    drift = verify_catalog(
        clinic_images(config),
        client,
        config.s3.bucket,
        belongs_to_clinic(config),
        flow_run.get_id(),
    )
    if orthanc is not None:
        records = open_catalog(config).orthanc(config.clinic_id, orthanc.url)
        verify_orthanc(records, orthanc, drift, orthanc.cfg.concurrency)
    # an incremental sync must read these patients' folders next, not wait for a full run
    differing = {*drift.missing, *(c["key"] for c in drift.changed), *drift.orthanc_missing}
    if differing:
        paths = {row.key: row.rel_path for row in clinic_images(config).rows()}
        clinic_marks(config).forget(
            pid for key in differing if (pid := patient_of_path(paths.get(key, ""))) is not None
        )
    return drift


def _verify_run_name() -> str:
    return clinic_run_name("verify")


@flow(name="verify-clinic", flow_run_name=_verify_run_name, persist_result=False)
def verify_clinic(config: ClinicConfig) -> Any:
    """Report objects missing, changed or unknown compared with the catalog; the run ends
    Failed when there are any."""
    protect_logs()
    try:
        with clinic_lock(config, "verify", flow_run.get_id()):
            drift = verify_task(config)
    except ClinicBusyError as exc:  # refused before any work: no traceback, one line
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc), data=exc)
    result = drift.to_dict()
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
    if result["orthanc"] is not None:
        get_run_logger().info(
            "clinic %s in Orthanc: %d recorded as held, %d missing",
            config.clinic_id,
            result["orthanc"]["checked"],
            len(result["orthanc"]["missing"]),
        )
    create_table_artifact(
        key=artifact_key("verify", config.clinic_id),
        table=[
            {"finding": "verified and intact", "count": result["verified_ok"]},
            {"finding": "missing in S3", "count": len(result["missing"])},
            {"finding": "changed in S3", "count": len(result["changed"])},
            {"finding": "unknown object", "count": len(result["unknown"])},
            {"finding": "not yet verified", "count": len(result["unverified"])},
            *(
                [
                    {"finding": "held by Orthanc", "count": result["orthanc"]["checked"]},
                    {"finding": "missing in Orthanc", "count": len(result["orthanc"]["missing"])},
                ]
                if result["orthanc"] is not None
                else []
            ),
        ],
        description=f"Verify of clinic {config.clinic_id} against its catalog",
    )
    if drift.ok:
        return Completed(message="S3 holds what the catalog says", data=result)
    create_table_artifact(
        key=artifact_key("verify-drift", config.clinic_id),
        table=drift.table(),
        description=f"Objects of clinic {config.clinic_id} that differ from the catalog",
    )
    return Failed(message=f"{drift.differences} object(s) differ from the catalog", data=result)
