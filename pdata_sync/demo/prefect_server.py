"""Run a real Prefect server on 127.0.0.1 with its own PREFECT_HOME, and what the README's
docs/operations.md does against it: create the work pool, deploy from a prefect.yaml, start
process workers. Used by ``pdata-sync demo --serve``, the tests and the benchmarks (each CLI
process then starts in about a second instead of spending 13-18 s on an ephemeral server).

Every process is started in its own session and stopped by its own process id: the server
process is ``prefect server start`` itself (in the foreground it runs uvicorn in-process);
a worker's flow-run children are in the worker's process group and are stopped with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pdata_sync.demo.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SETTINGS_FILE = REPO / "ops" / "prefect-server.env"


def recommended_settings(path: Path = SETTINGS_FILE) -> dict[str, str]:
    """The server settings pdata-sync documents in ops/prefect-server.env."""
    settings = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                settings[key.strip()] = value.strip()
    return settings


class PrefectServer:
    """``with PrefectServer(home) as server:`` -> ``server.api_url``, ``server.env()``."""

    def __init__(
        self,
        home: str | Path,
        *,
        port: int | None = None,
        ui: bool = False,
        extra_env: dict[str, str] | None = None,
        timeout: float = 90.0,
    ):
        self.home = Path(home)
        self.port = port or free_port()
        self.ui = ui
        self.extra_env = extra_env or {}  # e.g. the PostgreSQL connection settings
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        """Environment for a client process (CLI, worker) talking to this server."""
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def start(self, timeout: float | None = None) -> PrefectServer:
        timeout = timeout or self.timeout
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **recommended_settings(),
            **self.extra_env,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            # the --port flag alone leaves the UI pointing at 4200
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
        }
        env.pop("PREFECT_API_URL", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as proc
        prefect = str(Path(sys.executable).parent / "prefect")
        self.proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.home / 'server.log'}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {timeout} s")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """Stop one process started in its own session (see :func:`stop_processes`)."""
    stop_processes([proc] if proc is not None else [], timeout)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """Stop processes started in their own sessions, together: SIGTERM to each, SIGKILL to
    those still alive after ``timeout``, then whatever is left of each one's process group
    (children it started, e.g. a worker's flow runs)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def prefect_cli(
    args: list[str],
    env: dict[str, str],
    *,
    cwd: Path = REPO,
    timeout: float = 180,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``prefect --no-prompt ARGS`` from this environment's venv."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and out.returncode != 0:
        raise RuntimeError(
            f"prefect {' '.join(args)} failed ({out.returncode}):\n"
            f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        )
    return out


def create_work_pool(name: str, env: dict[str, str]) -> None:
    """``prefect work-pool create NAME --type process``; an existing pool is kept."""
    out = prefect_cli(["work-pool", "create", name, "--type", "process"], env, check=False)
    if out.returncode != 0 and "already exists" not in out.stdout + out.stderr:
        raise RuntimeError(f"work pool {name}: {out.stdout[-1000:]}{out.stderr[-1000:]}")


def deploy_all(prefect_file: Path, env: dict[str, str]) -> None:
    """``prefect deploy --all`` from a prefect.yaml; entrypoints are relative to the repo."""
    prefect_cli(["deploy", "--all", "--prefect-file", str(prefect_file)], env)


def start_worker(
    pool: str,
    queues: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    limit: int | None = None,
) -> subprocess.Popen[bytes]:
    """A process worker polling ``queues`` of ``pool`` (all of them when empty), running at
    most ``limit`` flow runs at once; runs flows from this checkout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool]
    for queue in queues:
        args += ["--work-queue", queue]
    if limit is not None:
        args += ["--limit", str(limit)]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, "PDATA_SYNC_HOME": str(REPO), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
