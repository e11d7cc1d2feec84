"""Flow ``verify-clinic``: re-check S3 against the image catalog, changing nothing in S3
(docs/adr/0004-catalog-and-acknowledged-uploads.md); drift it finds is recorded in the
catalog so the next sync repairs it (docs/adr/0005-trusted-no-change-runs.md). Runs in
Prefect so every audit is in the run history: a run that finds drift ends Failed, with the
findings as its data and a table artifact of every object that differs."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.flows.sync import artifact_key, clinic_run_name
from pdata_sync.pipeline.runs import run_verify
from pdata_sync.tasks.credentials import run_context
from pdata_sync.tasks.steps import PrefectRunner


def _verify_run_name() -> str:
    return clinic_run_name("verify")


@flow(name="verify-clinic", flow_run_name=_verify_run_name, persist_result=False)
def verify_clinic(config: ClinicConfig) -> Any:
    """Report objects missing, changed or unknown compared with the catalog; the run ends
    Failed when there are any."""
    protect_logs()
    drift, busy = run_verify(PrefectRunner(), run_context(config, flow_run.get_id()))
    if busy is not None:  # refused before any work: no traceback, one line
        get_run_logger().error("%s", busy)
        return Failed(message=str(busy), data=busy)
    assert drift is not None
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
