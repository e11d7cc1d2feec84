"""Flow ``export-research``: a research project's patients or studies, de-identified, into
the research bucket, each instance once (docs/research-export.md).

Thin orchestration: the sequence is pdata_sync.pipeline.export.run_export, its steps run as
tasks (the plan, each batch, the manifest). The run's
result and artifacts hold counts by source, and archive keys for what was held back or
failed; the manifest of what was exported (pseudonyms and de-identified UIDs only) is
written next to the export. Nothing links a patientGuid to its pseudonym.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.flows.sync import artifact_key
from pdata_sync.pipeline.export import run_export
from pdata_sync.pipeline.naming import run_name
from pdata_sync.research.export import SOURCES, ExportRequest
from pdata_sync.tasks.credentials import run_context
from pdata_sync.tasks.export import EXPORT_TASKS
from pdata_sync.tasks.steps import PrefectRunner

# the run form in the Prefect UI is built from these
_PROJECT = Field(..., description="Project slug: 1-63 lower-case letters, digits and dashes.")
_GUIDS = Field(None, description="patientGuids whose images to export.")
_STUDIES = Field(None, description="StudyInstanceUIDs to export (from the catalog).")


def _export_run_name() -> str:
    config = flow_run.parameters["config"]
    clinic_id = config["clinic_id"] if isinstance(config, dict) else config.clinic_id
    return run_name(
        clinic_id, flow_run.scheduled_start_time, f"export-{flow_run.parameters['project']}"
    )


@flow(
    name="export-research",
    flow_run_name=_export_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=8),
    persist_result=False,
)
def export_research(
    config: ClinicConfig,
    project: str = _PROJECT,
    patient_guids: list[str] | None = _GUIDS,
    study_uids: list[str] | None = _STUDIES,
) -> Any:
    """Export the requested patients' (or studies') images, de-identified, to the research
    bucket. Ends Failed when an instance could not be exported from any source."""
    protect_logs()
    request = ExportRequest(tuple(patient_guids or ()), tuple(study_uids or ()))
    run = run_export(
        PrefectRunner(EXPORT_TASKS), run_context(config, flow_run.get_id()), project, request
    )
    report, result, logger = run.report, run.to_dict(), get_run_logger()
    logger.info(
        "project %s: %d instances planned, exported %s, %d already exported, %d held back, "
        "%d failed",
        project,
        run.planned,
        ", ".join(f"{n} from {s}" for s, n in report.exported.items()),
        report.skipped,
        len(report.held_back),
        len(report.failed),
    )
    create_table_artifact(
        key=artifact_key("export", f"{config.clinic_id}-{project}"),
        table=[
            *({"outcome": "exported", "source": s, "count": report.exported[s]} for s in SOURCES),
            {"outcome": "skipped", "source": "already exported", "count": report.skipped},
            {
                "outcome": "held back",
                "source": "burned-in annotation",
                "count": len(report.held_back),
            },
            {
                "outcome": "failed",
                "source": "no source had it, or an error",
                "count": len(report.failed),
            },
            {
                "outcome": "not found",
                "source": "requested, nothing of this clinic's",
                "count": len(report.not_found_guids) + len(report.not_found_studies),
            },
        ],
        description=f"Research export {project} of clinic {config.clinic_id}",
    )
    missing = len(report.not_found_guids) + len(report.not_found_studies)
    if missing:
        logger.warning(
            "%d requested patient(s) or study(ies) not found: clinic %s archived nothing of them",
            missing,
            config.clinic_id,
        )
    if not report.ok:
        problems = [f"{len(report.failed)} instance(s) not exported"] if report.failed else []
        if missing:
            problems.append(f"{missing} requested patient(s) or study(ies) not found")
        return Failed(message="; ".join(problems), data=result)
    return Completed(message="exported", data=result)
