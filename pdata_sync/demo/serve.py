"""``pdata-sync demo --serve``: docs/operations.md on one machine.

Generates (or reuses) the demo clinic, starts SeaweedFS, the resolver and a Prefect server
with its UI (``PREFECT_HOME`` under the demo folder, so the run history survives restarts),
creates the work pool, deploys the demo clinic from a deployment file like the ones in
``deployments/``, starts one process worker per work queue the deployments use, and prints
the UI's address and a ready custom-run override. Runs until Ctrl-C (or SIGTERM), then stops
everything it started, each by its own process id.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from pdata_sync.base.config import load_config
from pdata_sync.demo.prefect_server import (
    PrefectServer,
    create_work_pool,
    deploy_all,
    start_worker,
    stop_processes,
)
from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import BUCKET, load_or_generate, stop_on_signals, write_config
from pdata_sync.demo.seaweed import SeaweedS3
from pdata_sync.fleet.deployments import load_all, render_to

WORK_POOL = "pdata-sync"
DEMO_SCHEDULE = {"cron": "30 1 * * *", "timezone": "Europe/Berlin"}
READY = "pdata-sync demo: ready"
WORKER_STOP_SECONDS = 10


def write_deployment_file(
    folder: Path,
    config_path: Path,
    *,
    schedule: dict[str, Any],
    description: str,
    work_queue: str | None = None,
    verify_schedule: dict[str, Any] | None = None,
    full_schedule: dict[str, Any] | None = None,
) -> Path:
    """A clinic's deployment file (as in ``deployments/``) around a clinic config file."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    document: dict[str, Any] = {
        "description": description,
        "schedule": schedule,
        "tags": ["demo"],
        "work_pool": WORK_POOL,
        "work_queue": work_queue or config["clinic_id"],
        "config": config,
    }
    if verify_schedule:
        document["verify_schedule"] = verify_schedule
    if full_schedule:
        document["full_schedule"] = full_schedule
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config['clinic_id']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def deployed_queues(prefect_file: Path) -> list[str]:
    """The work queues the deployments of a prefect.yaml use, in order of appearance."""
    document = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    queues: list[str] = []
    for deployment in document["deployments"]:
        queue = deployment["work_pool"]["work_queue_name"]
        if queue not in queues:
            queues.append(queue)
    return queues


def _ui_port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else (or for 0) any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_demo(workdir: str | Path = ".demo", fresh: bool = False, port: int = 4200) -> int:
    work = Path(workdir).resolve()
    manifest = load_or_generate(work, fresh)
    mapping = json.loads(Path(manifest.mapping_path).read_text(encoding="utf-8"))
    workers: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack, stop_on_signals():
        try:
            resolver = stack.enter_context(ResolverServer(mapping))
            s3 = stack.enter_context(SeaweedS3(work / "s3", buckets=(BUCKET,)))
            server = PrefectServer(work / "prefect", port=_ui_port(port), ui=True)
            stack.callback(server.stop)
            print(f"demo: starting the Prefect server on {server.ui_url} ...", file=sys.stderr)
            server.start(timeout=180)
            env = server.env()

            config_path = write_config(
                work / "clinic.yaml",
                manifest,
                resolver_url=resolver.url,
                endpoint=s3.endpoint,
                state_dir=work / "state",
            )
            clinic_id = load_config(config_path).clinic_id
            folder = work / "deployments"
            write_deployment_file(
                folder,
                config_path,
                schedule=DEMO_SCHEDULE,
                description="Demo clinic (generated PDATA, SQLite Sidexis database)",
                verify_schedule={"cron": "0 4 * * 0", "timezone": "Europe/Berlin"},
            )
            prefect_file = work / "prefect.yaml"
            render_to(folder, prefect_file)
            create_work_pool(WORK_POOL, env)
            print("demo: deploying ...", file=sys.stderr)
            deploy_all(prefect_file, env)

            # Workers get S3 credentials from the environment, as a worker at a clinic
            # would from its instance role or an AwsCredentials block.
            worker_env = {**env, **s3.env()}
            # A Prefect worker does not end promptly on SIGTERM (it re-sends itself SIGINT
            # and waits); an interrupted demo run is redone by the next one (ADR 0004).
            stack.callback(stop_processes, workers, WORKER_STOP_SECONDS)
            for queue in deployed_queues(prefect_file):
                proc = start_worker(WORK_POOL, [queue], worker_env, work / "logs" / f"{queue}.log")
                workers.append(proc)

            override = {"config": load_config(config_path).model_dump(mode="json", by_alias=True)}
            override["config"]["transfer"]["batch_size"] = 50
            override_path = work / "override.json"
            override_path.write_text(json.dumps(override, indent=2), encoding="utf-8")
            deployment = load_all(folder)[0].name
            _print_ready(server, clinic_id, deployment, override_path, work)

            while True:
                for proc in [server.proc, *workers]:
                    if proc is None or proc.poll() is not None:
                        print(
                            f"demo: a process it started exited (see {work}); stopping",
                            file=sys.stderr,
                        )
                        return 1
                time.sleep(1)
        except KeyboardInterrupt:
            print(
                "\ndemo: stopping the workers, the Prefect server and SeaweedFS ...",
                file=sys.stderr,
            )
    print("demo: stopped", file=sys.stderr)
    return 0


def _print_ready(
    server: PrefectServer, clinic_id: str, deployment: str, override: Path, work: Path
) -> None:
    print(
        f"""
Prefect UI:   {server.ui_url}
Deployments:  sync-clinic/{deployment} (cron 30 1 * * *, Europe/Berlin),
              verify-clinic/{deployment}-verify, retrieve-patient-images/retrieve;
              one worker per queue ({clinic_id}, retrieval)
Custom run:   in the UI, Deployments -> sync-clinic/{deployment} -> Run -> Custom run, or
                export PREFECT_API_URL={server.api_url}
                {Path(sys.executable).parent / "prefect"} deployment run sync-clinic/{deployment} \\
                    --params "$(cat {override})"
              ({override.name}: the clinic config with transfer.batch_size 50)
Logs:         {work / "logs"}, {server.log_path}
{READY} (Ctrl-C stops everything it started)""",
        flush=True,
    )
