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

from pdata_sync.config import load_config
from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config
from tests.conftest import BUCKET, load_mapping, make_clinic

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def prefect(args: list[str], env: dict[str, str], timeout: int = 180, **kw):
    out = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )
    assert out.returncode == 0, (
        f"prefect {' '.join(args)}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    )
    return out


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
    return env


def test_schedules_and_limits_parse_into_one_deployment_per_clinic(deployed, prefect_server):
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "deployments").glob("*.yaml")}
    with api(prefect_server) as client:
        for clinic_id, spec in files.items():
            dep = client.read_deployment_by_name(f"sync-clinic/{clinic_id}")
            assert dep.work_pool_name == spec["work_pool"]
            assert dep.work_queue_name == spec["work_queue"]
            assert dep.parameters["config"]["clinic_id"] == clinic_id
            assert len(dep.schedules) == 1
            schedule = dep.schedules[0].schedule
            assert schedule.cron == spec["schedule"]["cron"]
            assert schedule.timezone == spec["schedule"]["timezone"]
            assert dep.concurrency_limit == 1
            assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"
            assert set(spec["tags"]) <= set(dep.tags)
            # the UI's run form is built from this schema: the clinic config, with descriptions
            schema = dep.parameter_openapi_schema
            clinic = schema["definitions"]["ClinicConfig"]["properties"]
            assert "description" in clinic["pdata_root"]
            s3 = schema["definitions"]["S3Config"]["properties"]
            assert "aws_credentials_block" in s3 and "secret" not in json.dumps(s3).lower()
        retrieve = client.read_deployment_by_name("retrieve-patient-images/retrieve")
        assert retrieve.schedules == []


def test_custom_run_executed_by_a_worker_is_audited(deployed, prefect_server, seaweed, tmp_path):
    clinic = make_clinic(tmp_path / "clinic", clinic_id="clinic-001")
    s3 = seaweed.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])

    with ResolverServer(load_mapping(clinic)) as resolver:
        config = load_config(
            write_config(
                tmp_path / "clinic.yaml",
                clinic,
                resolver_url=resolver.url,
                endpoint=seaweed.endpoint,
                state_dir=tmp_path / "state",
                batch_size=5,
            )
        )
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
        flow_run_id = next(
            line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line
        )

        worker_env = {**deployed, **seaweed.env(), "PDATA_SYNC_HOME": str(REPO)}
        prefect(
            ["worker", "start", "--pool", "pdata-sync", "--work-queue", "clinic-001", "--run-once"],
            worker_env,
            timeout=300,
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
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])
            ]
            assert len(objects) == len(clinic.expected)

            from prefect.client.schemas.filters import (
                ArtifactFilter,
                ArtifactFilterFlowRunId,
                FlowRunFilter,
                FlowRunFilterId,
            )

            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            table = next(a for a in artifacts if a.key == "sync-summary-clinic-001")
            rows = json.loads(table.data) if isinstance(table.data, str) else table.data
            counts = {(r["outcome"], r["reason"]): r["count"] for r in rows}
            assert counts[("uploaded", "")] == len(objects)
            assert counts[("unchanged", "already in S3")] == 0

            batches = -(-len(clinic.expected) // 5)
            expected_runs = 6 + batches
            deadline = time.monotonic() + 30
            while True:
                task_runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), limit=200
                )
                if len(task_runs) >= expected_runs or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert len(task_runs) == expected_runs
            assert all(t.state_type.value == "COMPLETED" for t in task_runs)
            history = json.dumps([a.data for a in artifacts], default=str)
            for value in clinic.phi:
                assert value not in history
