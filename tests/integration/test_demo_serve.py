"""``pdata-sync demo --serve`` as a new operator uses it: start it, open the printed UI
address, find the demo deployment with its schedule, start a custom run with the printed
override, see it complete with named task runs and artifacts, press Ctrl-C, and find no
process of it left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from pdata_sync.demo.serve import READY
from tests.conftest import CLI, make_clinic
from tests.support.prefect_runs import has_task, wait_for_task_runs


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose command line or environment mention ``text``
    (every process the demo starts gets the demo folder in one or the other)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline or text.encode() in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_demo_serve_runs_a_custom_run_and_leaves_nothing_behind(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    work = tmp_path / "demo"
    # a small clinic where the demo looks for one (it reuses a generated clinic)
    clinic = make_clinic(work / "clinic", clinic_id="demo-clinic")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    proc = subprocess.Popen(
        [CLI, "demo", "--serve", "--workdir", str(work), "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if READY in line:
                break
        text = "".join(output)
        assert READY in text, text[-3000:]
        ui = re.search(r"Prefect UI:\s+(\S+)", text).group(1)
        override_path = Path(re.search(r'--params "\$\(cat (\S+)\)"', text).group(1))

        page = httpx.get(ui, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        with SyncPrefectClient(f"{ui}/api") as client:
            deployment = client.read_deployment_by_name("sync-clinic/demo-clinic")
            schedule = deployment.schedules[0].schedule
            assert (schedule.cron, schedule.timezone) == ("30 1 * * *", "Europe/Berlin")
            assert "Europe/Berlin" in deployment.description
            retrieve = client.read_deployment_by_name("retrieve-patient-images/retrieve")
            assert retrieve.parameters["s3"]["endpoint_url"].startswith("http://127.0.0.1:")

            override = json.loads(override_path.read_text())
            run = client.create_flow_run_from_deployment(deployment.id, parameters=override)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                run = client.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    break
                time.sleep(1)
            assert run.state.is_completed(), run.state
            assert run.name.startswith("demo-clinic-")
            assert run.parameters["config"]["transfer"]["batch_size"] == 50
            task_runs = wait_for_task_runs(client, run.id, has_task("upload-batch-01-of-01"))
            names = {t.name for t in task_runs}
            assert "upload-batch-01-of-01" in names, names
            assert {"scan-pdata", "resolve-card-ids"} <= {n.rsplit("-", 1)[0] for n in names}
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            keys = {a.key for a in artifacts}
            assert {"sync-summary-demo-clinic", "sync-problems-demo-clinic"} <= keys
            summary = next(a for a in artifacts if a.key == "sync-summary-demo-clinic")
            rows = json.loads(summary.data) if isinstance(summary.data, str) else summary.data
            uploaded = sum(r["count"] for r in rows if r["outcome"] in ("uploaded", "unchanged"))
            assert uploaded >= len(clinic.expected)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rest, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        output.append(rest or "")
    assert proc.returncode == 0, "".join(output)[-3000:]
    assert "demo: stopped" in "".join(output)
    left = processes_mentioning(str(work))
    assert left == [], left
