"""No patient data and no secrets in anything a run leaves behind, even at DEBUG."""

from __future__ import annotations

import json
import os

from tests.conftest import BUCKET, run_cli


def test_debug_sync_leaks_no_phi_and_no_secret(make_site, seaweed, prefect_server):
    site = make_site(clinic_id="phi-clinic", seed=23)
    clinic, config = site.clinic, site.config
    db_password = "Sidexis-Pw-" + os.urandom(6).hex()
    env = {
        **os.environ,
        **site.env,
        "PDATA_SYNC_DB_PASSWORD": db_password,
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG",
        "PREFECT_LOGGING_TO_API_LEVEL": "DEBUG",
    }
    out = run_cli(["-v", "sync", "--config", str(config), "--json"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["uploaded"] == len(clinic.expected)
    assert "DEBUG" in out.stderr  # debug logging really was on

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with SyncPrefectClient(prefect_server.api_url) as client:
        run_id = summary["flow_run_id"]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        run = client.read_flow_run(run_id)
    assert logs and artifacts
    s3 = seaweed.client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="images/")
        for o in page.get("Contents", [])
    ]

    everything = {
        "stdout": out.stdout,
        "stderr": out.stderr,
        "prefect logs": "\n".join(log.message for log in logs),
        "artifacts": json.dumps([a.data for a in artifacts], default=str),
        "flow run parameters": json.dumps(run.parameters),
        "keys": "\n".join(keys),
    }
    secrets = [db_password, seaweed.secret_key]
    phi = [v for v in clinic.phi if len(v) >= 4]
    assert any(len(v) == 8 and v.isdigit() for v in phi)  # birth dates are among them
    for where, text in everything.items():
        for value in phi:
            assert value not in text, f"patient data in {where}"
        for value in secrets:
            assert value not in text, f"a secret in {where}"
