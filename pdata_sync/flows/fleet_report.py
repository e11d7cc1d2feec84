"""Flow ``fleet-report``: every clinic at a glance, from Prefect's own run history.

It reads the deployed clinics, the finished sync and verify runs of the last ``days``, and
each sync's ``sync-summary`` table artifact through Prefect's API, and hands them to the
pure core (pdata_sync.fleet.report). It leaves:

* a table artifact ``fleet-report``: one row per clinic;
* a markdown artifact ``fleet-report-chart`` with the chart embedded (a PNG as a data URL:
  the UI shows it without any file server) and where the files went;
* ``{out_dir}/{date}.parquet`` and ``{date}.png`` on the machine that ran it, owner-only and
  never over a file it did not write (a second report of the day gets the time in its name).

Counts, sizes, states and times only. Deployed as ``fleet-report/daily``
(docs/operations.md).
"""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
)
from prefect.client.schemas.sorting import ArtifactSort, DeploymentSort, FlowRunSort

from pdata_sync.base.local_files import NotReplaced, write_new
from pdata_sync.fleet.report import (
    SYNC,
    VERIFY,
    RunRecord,
    chart_png,
    daily_frame,
    fleet_frame,
    headline,
    summary_counts,
    table_rows,
)
from pdata_sync.pipeline.context import default_state_dir
from pdata_sync.tasks.api_pages import PAGE, all_pages

FLOWS = {"sync-clinic": SYNC, "verify-clinic": VERIFY}


def default_out_dir() -> Path:
    return default_state_dir() / "reports" / "fleet"


def _clinic_of(parameters: dict[str, Any]) -> str | None:
    config = parameters.get("config")
    clinic = config.get("clinic_id") if isinstance(config, dict) else None
    return clinic if isinstance(clinic, str) and clinic else None


def read_history(client: Any, since: datetime) -> tuple[set[str], list[RunRecord]]:
    """The clinics deployed for sync, and the sync and verify runs that ended after
    ``since``, each sync with its summary counts."""
    flows = {f.id: FLOWS[f.name] for f in client.read_flows(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(FLOWS))))}  # fmt: skip
    deployments = all_pages(
        lambda **page: client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["sync-clinic"])),
            deployment_filter=DeploymentFilter(),
            sort=DeploymentSort.NAME_ASC,  # a stable order for paging
            **page,
        )
    )
    clinics = {c for d in deployments if (c := _clinic_of(d.parameters or {}))}
    runs = all_pages(
        lambda **page: client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(FLOWS))),
            flow_run_filter=FlowRunFilter(end_time=FlowRunFilterEndTime(after_=since)),
            sort=FlowRunSort.ID_DESC,
            **page,
        )
    )
    unique = {r.id: r for r in runs}  # a run that ended while paging may show up twice
    finished = [r for r in unique.values() if r.end_time and r.state_type and r.flow_id in flows]
    sync_ids = [r.id for r in finished if flows[r.flow_id] == SYNC]
    counts: dict[Any, dict[tuple[str, str], int]] = {}
    for start in range(0, len(sync_ids), PAGE):
        chunk = sync_ids[start : start + PAGE]
        for artifact in all_pages(
            lambda chunk=chunk, **page: client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(like_="sync-summary-"),
                    flow_run_id=ArtifactFilterFlowRunId(any_=chunk),
                ),
                sort=ArtifactSort.ID_DESC,
                **page,
            )
        ):
            counts[artifact.flow_run_id] = summary_counts(artifact.data)
    records = []
    for run in finished:
        clinic = _clinic_of(run.parameters or {})
        if clinic is None:
            continue
        records.append(
            RunRecord(
                run_id=str(run.id),
                flow=flows[run.flow_id],
                clinic_id=clinic,
                state=run.state_type.value,
                ended=run.end_time.astimezone(UTC),
                counts=counts.get(run.id, {}),
            )
        )
    return clinics, records


def _write(folder: Path, stem: str, suffix: str, content: bytes, now: datetime) -> Path:
    """``{stem}{suffix}``, or with the time when that name holds another report already."""
    path = folder / f"{stem}{suffix}"
    try:
        write_new(path, content)
    except NotReplaced:
        path = folder / f"{stem}T{now:%H%M%S}Z{suffix}"
        write_new(path, content)
    return path


@flow(name="fleet-report", persist_result=False, log_prints=False)
def fleet_report(days: int = 30, out_dir: str | None = None, late_hours: float = 36.0) -> Any:
    """Every clinic at a glance: last successful sync, images and bytes archived (total and
    last 7 days), backlog, failed and rejected counts, last verify; a chart of images
    archived per day per clinic over ``days`` and of the clinics by hours since their last
    success. ``out_dir``: where the Parquet file and the PNG go (default: the state
    folder's ``reports/fleet``). ``late_hours``: a clinic without a Completed sync for
    longer is counted as late in the headline."""
    if not 1 <= days <= 366:
        raise ValueError("days: 1 to 366")
    logger = get_run_logger()
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        clinics, runs = read_history(client, now - timedelta(days=days))
    fleet = fleet_frame(clinics, runs, now)
    daily = daily_frame(clinics, runs, now.date(), days)
    png = chart_png(fleet, daily, days, late_hours)
    folder = Path(out_dir) if out_dir else default_out_dir()
    buffer = io.BytesIO()
    fleet.to_parquet(buffer, index=False)
    stem = f"{now:%Y-%m-%d}"
    parquet = _write(folder, stem, ".parquet", buffer.getvalue(), now)
    chart = _write(folder, stem, ".png", png, now)
    line = headline(fleet, late_hours)
    create_table_artifact(key="fleet-report", table=table_rows(fleet), description=line)
    create_markdown_artifact(
        key="fleet-report-chart",
        markdown=(
            f"# Fleet report {stem}\n\n{line}.\n\n"
            f"![images archived per day per clinic; clinics by hours since their last "
            f"success](data:image/png;base64,{base64.b64encode(png).decode('ascii')})\n\n"
            f"Files on the machine that ran the report: `{parquet}` (one row per clinic; "
            f"DuckDB: `SELECT * FROM '{parquet}'`) and `{chart}`.\n"
        ),
        description=f"Fleet report {stem}: the chart",
    )
    logger.info("fleet report: %s; %s", line, parquet)
    return {"clinics": len(fleet), "parquet": str(parquet), "chart": str(chart), "headline": line}
