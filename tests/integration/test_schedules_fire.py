"""Scheduled nightly syncs are the product's main way of running: this checks that a schedule
fires, end to end. A real ``prefect server start`` (with its scheduler service), ``prefect
deploy --all`` from a prefect.yaml rendered from a clinic file whose schedule is every minute
(a test override: prefect.yaml keeps the clinics' real schedules), a real process worker.
The run must be created by the scheduler (not by ``deployment run``), executed by the
worker and complete with every object in SeaweedFS; the server's log must hold no traceback.
The clinic's full-reconcile schedule (``full_schedule``, also every minute here) must create
runs with ``full_run: true`` that the worker runs as full reconciles.

With SQLAlchemy 2.1 (Prefect 3.8.8's scheduler fails every minute with "Can't evaluate bulk
DML statement") no run is ever created and this test fails.
"""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

from pdata_sync.demo.prefect_server import (
    PrefectServer,
    create_work_pool,
    deploy_all,
    start_worker,
    stop_process,
)
from pdata_sync.demo.serve import WORK_POOL, write_deployment_file
from pdata_sync.fleet.deployments import render_to
from tests.conftest import assert_exactly_expected
from tests.support.prefect_runs import has_task, wait_for_task_runs

CLINIC = "sched-clinic"


def summary_table(client: Any, flow_run_id: Any) -> str:
    """The text of a sync run's counts table (its sync-summary artifact)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return "\n".join(str(a.data) for a in artifacts if a.key and "sync-summary" in a.key)


def test_a_schedule_creates_a_run_that_the_worker_completes(make_site, seaweed, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
    )

    # incremental runs: a full reconcile is then a run of its own kind, with its reason
    site = make_site(settings={"incremental": True}, clinic_id=CLINIC)
    clinic, config_path = site.clinic, site.config
    with PrefectServer(tmp_path / "prefect") as server:
        folder = tmp_path / "deployments"
        write_deployment_file(
            folder,
            config_path,
            # the full-reconcile schedule every minute too (a clinic's: nightly Monday to
            # Saturday, full on Sunday); the two runs due together run one after the other
            schedule={"cron": "* * * * *", "timezone": "Europe/Berlin"},
            full_schedule={"cron": "* * * * *", "timezone": "Europe/Berlin"},
            description="every minute (test override)",
        )
        render_to(folder, tmp_path / "prefect.yaml")
        env = server.env()
        create_work_pool(WORK_POOL, env)
        deploy_all(tmp_path / "prefect.yaml", env)
        worker = start_worker(
            WORK_POOL, [CLINIC], {**env, **seaweed.env()}, tmp_path / "worker.log"
        )
        try:
            with SyncPrefectClient(server.api_url) as client:
                runs_of_clinic = FlowRunFilter()
                deployment = DeploymentFilter(name=DeploymentFilterName(any_=[CLINIC]))
                done: dict[bool, Any] = {}  # full_run -> the first run of that kind to end
                deadline = time.monotonic() + 300
                while len(done) < 2 and time.monotonic() < deadline:
                    runs = client.read_flow_runs(
                        flow_run_filter=runs_of_clinic, deployment_filter=deployment
                    )
                    for r in runs:
                        if r.state and r.state.is_final():
                            done.setdefault(bool(r.parameters.get("full_run")), r)
                    time.sleep(2)
                assert len(done) == 2, (
                    f"no nightly and full run both finished in 300 s; runs: "
                    f"{[(r.name, r.parameters.get('full_run'), r.state) for r in runs]}"
                    f"\nserver log tail:\n{server.log_path.read_text()[-3000:]}"
                )
                for r in done.values():
                    assert r.state.is_completed(), r.state
                    assert r.auto_scheduled
                # the full schedule's run is a full reconcile, the nightly one is not
                assert "requested (--full / full_run)" in summary_table(client, done[True].id)
                assert "requested" not in summary_table(client, done[False].id)
                done = done[False]
                # created by the scheduler, for a whole minute of the schedule's clock
                assert done.auto_scheduled
                due = done.expected_start_time
                assert due.second == 0 and due.microsecond == 0
                stamp = due.astimezone(UTC).strftime("%Y-%m-%dT%H-%MZ")
                assert done.name == f"{CLINIC}-{stamp}"
                task_runs = wait_for_task_runs(client, done.id, has_task("upload-batch-01-of-01"))
                assert any(t.name == "upload-batch-01-of-01" for t in task_runs)
        finally:
            stop_process(worker, timeout=10)

        assert_exactly_expected(seaweed.client(), clinic)
        log = server.log_path.read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in log, log[-4000:]
        assert "Can't evaluate bulk DML" not in log
