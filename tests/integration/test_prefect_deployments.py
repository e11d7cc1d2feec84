"""Production shape: a real Prefect server, ``prefect deploy --all`` from this repository, a
custom run of one clinic's deployment with its ``config`` parameter overridden (as the UI's
"Custom run" does), executed by a real process worker against SeaweedFS and the resolver,
then everything read back through the Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from pdata_sync.base.config import load_config
from pdata_sync.tasks.steps import clinic_limit_name
from tests.conftest import BUCKET
from tests.support.prefect_runs import at_least, wait_for_task_runs

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], env: dict[str, str], timeout: int, drop=(), input=None):
    full_env = {k: v for k, v in {**os.environ, "COLUMNS": "250", **env}.items() if k not in drop}
    out = subprocess.run(
        cmd,
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def pdata_sync_cli(args: list[str], env: dict[str, str], input=None):
    return _run([str(BIN / "pdata-sync"), *args], env, 120, input=input)


def prefect(args: list[str], env: dict[str, str], timeout: int = 180, drop=()):
    return _run([str(BIN / "prefect"), "--no-prompt", *args], env, timeout, drop=drop)


AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def started_run(deployment: str, params: Path, env: dict[str, str]) -> str:
    """``prefect deployment run`` with these parameters; the new flow run's id."""
    out = prefect(["deployment", "run", deployment, "--params", params.read_text()], env)
    return next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)


def run_logs(client, flow_run_id, text: str) -> list:
    """The flow run's log records containing ``text``."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    )
    return [log for log in logs if text in log.message]


def api(server):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(server.api_url)


@pytest.fixture(scope="module")
def deployed(prefect_server):
    env = prefect_server.env()
    pool = subprocess.run(
        [
            str(BIN / "prefect"),
            "--no-prompt",
            "work-pool",
            "create",
            "pdata-sync",
            "--type",
            "process",
        ],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr
    prefect(["deploy", "--all"], env)
    # The tests start their own runs. The clinics' real schedules must not add runs to the
    # queues the tests' workers take from: clinic-001's nightly run (01:30 Berlin, 00:30
    # UTC) once took the clinic's slot, and the test's run waited for it until it failed.
    # A paused deployment keeps its schedules (read below) but the scheduler creates no run.
    with api(prefect_server) as client:
        for deployment in client.read_deployments():
            client.pause_deployment(deployment.id)
    return env


def test_schedules_and_limits_parse_into_one_deployment_per_clinic(deployed, prefect_server):
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "deployments").glob("*.yaml")}
    with api(prefect_server) as client:
        for clinic_id, spec in files.items():
            dep = client.read_deployment_by_name(f"sync-clinic/{clinic_id}")
            assert dep.work_pool_name == spec["work_pool"]
            assert dep.work_queue_name == spec["work_queue"]
            assert dep.parameters["config"]["clinic_id"] == clinic_id
            # the nightly schedule, and a clinic's full-reconcile night with full_run: true
            wanted = [(spec["schedule"], {})]
            if "full_schedule" in spec:
                wanted.append((spec["full_schedule"], {"full_run": True}))
            got = sorted(
                ((s.schedule.cron, s.schedule.timezone, s.parameters) for s in dep.schedules),
                key=lambda s: bool(s[2]),
            )
            assert got == [(w["cron"], w["timezone"], params) for w, params in wanted]
            assert dep.global_concurrency_limit.limit == 1
            assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"
            assert set(spec["tags"]) <= set(dep.tags)
            if "verify_schedule" in spec:  # the weekly audit runs on the clinic's own queue
                audit = client.read_deployment_by_name(f"verify-clinic/{clinic_id}-verify")
                assert audit.entrypoint == "pdata_sync/flows/verify.py:verify_clinic"
                assert audit.work_queue_name == spec["work_queue"]
                assert audit.schedules[0].schedule.cron == spec["verify_schedule"]["cron"]
                assert audit.parameters["config"]["clinic_id"] == clinic_id
            # the UI's run form is built from this schema: the clinic config, with descriptions
            schema = dep.parameter_openapi_schema
            clinic = schema["definitions"]["ClinicConfig"]["properties"]
            assert "description" in clinic["pdata_root"]
            s3 = schema["definitions"]["S3Config"]["properties"]
            assert "aws_credentials_block" in s3 and "secret" not in json.dumps(s3).lower()
        retrieve = client.read_deployment_by_name("retrieve-patient-images/retrieve")
        assert retrieve.schedules == []
        # its run form: titled, described fields; the GUID's says what a UUID looks like
        form = retrieve.parameter_openapi_schema["properties"]
        assert form["patient_guid"]["title"] == "patientGuid (UUID)"
        assert "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71" in form["patient_guid"]["description"]
        assert all(field.get("description") for field in form.values())
        s3_form = retrieve.parameter_openapi_schema["definitions"]["S3Config"]["properties"]
        assert "endpoint_url" in s3_form


def test_custom_run_executed_by_a_worker_is_audited(
    deployed, make_site, prefect_server, seaweed, tmp_path
):
    site = make_site(
        transfer={"batch_size": 5},
        settings={
            "s3": {"aws_credentials_block": "test-aws"},
            "database": {"password_secret_block": "clinic-001-sidexis-password"},
        },
        clinic_id="clinic-001",
    )
    clinic, s3 = site.clinic, site.client

    # secrets go into blocks with the documented commands; the worker below gets no AWS
    # variables, so S3 access can only come from the block
    pdata_sync_cli(
        ["blocks", "aws", "--name", "test-aws", "--region", "us-east-1"],
        {**deployed, **seaweed.env()},
    )
    db_password = "db-Pa55-" + os.urandom(6).hex()
    pdata_sync_cli(
        ["blocks", "db-password", "--name", "clinic-001-sidexis-password"],
        deployed,
        input=db_password + "\n",
    )

    config = load_config(site.config)
    override = {"config": config.model_dump(mode="json", by_alias=True)}
    (tmp_path / "params.json").write_text(json.dumps(override))
    started = prefect(
        [
            "deployment",
            "run",
            "sync-clinic/clinic-001",
            "--params",
            (tmp_path / "params.json").read_text(),
        ],
        deployed,
    )
    flow_run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)

    worker_env = {
        **deployed,
        "PDATA_SYNC_HOME": str(REPO),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    prefect(
        ["worker", "start", "--pool", "pdata-sync", "--work-queue", "clinic-001", "--run-once"],
        worker_env,
        timeout=300,
        drop=AWS_VARS,
    )

    with api(prefect_server) as client:
        deadline = time.monotonic() + 120
        run = client.read_flow_run(flow_run_id)
        while not run.state.is_final() and time.monotonic() < deadline:
            time.sleep(1)
            run = client.read_flow_run(flow_run_id)
        assert run.state.is_completed(), run.state
        # the override is what the run used and what the history shows
        assert run.parameters["config"]["s3"]["endpoint_url"] == seaweed.endpoint
        assert run.parameters["config"]["pdata_root"] == clinic.pdata_root
        assert run.parameters["config"]["transfer"]["batch_size"] == 5

        objects = [
            o
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix="images/"
            )
            for o in page.get("Contents", [])
        ]
        assert len(objects) == len(clinic.expected)

        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
        )

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        table = next(a for a in artifacts if a.key == "sync-summary-clinic-001")
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        counts = {(r["outcome"], r["reason"]): r["count"] for r in rows}
        assert counts[("uploaded", "")] == len(objects)
        assert counts[("unchanged", "already in S3")] == 0

        batches = counts[("batches", "upload task runs")]
        assert batches >= len(clinic.expected) / 5
        from pdata_sync.flows.sync import BOOKKEEPING_TASKS

        expected_runs = BOOKKEEPING_TASKS + batches
        task_runs = wait_for_task_runs(client, run.id, at_least(expected_runs))
        assert len(task_runs) == expected_runs
        assert all(t.state_type.value == "COMPLETED" for t in task_runs)
        assert sum(t.name.startswith("upload-batch") for t in task_runs) == batches
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        assert any("uploaded" in log.message for log in logs)
        history = json.dumps([a.data for a in artifacts], default=str) + "\n".join(
            log.message for log in logs
        )
        for value in clinic.phi:
            assert value not in history
        assert db_password not in history
        assert seaweed.secret_key not in history

    # A sync and a verify of the clinic started together (the weekly audit meeting the
    # nightly sync) share the clinic's one concurrency slot: the test occupies it, both
    # runs must wait for it, and once it is free they run one after the other, both
    # Completed (without the shared slot one of them fails on the catalog lock).
    limit = clinic_limit_name("clinic-001")
    with api(prefect_server) as client:
        client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active_slots=1))
    together = [
        started_run(deployment, tmp_path / "params.json", deployed)
        for deployment in ("sync-clinic/clinic-001", "verify-clinic/clinic-001-verify")
    ]
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "pdata-sync"]
        + ["--work-queue", "clinic-001", "--run-once"],
        cwd=REPO,
        env={k: v for k, v in {**os.environ, **worker_env}.items() if k not in AWS_VARS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with api(prefect_server) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                waiting = [run_logs(client, r, "waiting for concurrency limit") for r in together]
                if all(waiting):
                    break
                time.sleep(1)
            assert all(waiting), "both runs wait for the clinic's slot"
            time.sleep(3)
            for run_id in together:  # still waiting while the slot is taken
                assert not client.read_flow_run(run_id).state.is_final()
                assert not run_logs(client, run_id, "holding concurrency limit")
            client.update_global_concurrency_limit(
                limit, GlobalConcurrencyLimitUpdate(active_slots=0)
            )
            worker.wait(timeout=300)
            runs = [client.read_flow_run(run_id) for run_id in together]
            assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
            # one after the other, proven by the cause rather than by clocks: each held the
            # slot, and two runs of one clinic inside it at once would have met the
            # catalog's clinic lock, which refuses the second (it would end Failed, "busy")
            for r in runs:
                assert len(run_logs(client, r.id, "holding concurrency limit")) == 1
                assert not run_logs(client, r.id, "is busy"), r.name
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    # the history as an operator reads it (docs/operations.md)
    listing = prefect(["flow-run", "ls", "--flow-name", "sync-clinic", "--limit", "50"], deployed)
    assert run.name in listing.stdout
    inspected = prefect(["artifact", "inspect", "sync-summary-clinic-001"], deployed)
    assert "uploaded" in inspected.stdout and str(len(objects)) in inspected.stdout
