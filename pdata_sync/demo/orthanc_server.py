"""Run a real Orthanc (Debian's ``orthanc`` package) for the demo and the tests.

Orthanc 1.10 has no option to bind one address: ``RemoteAccessAllowed: false`` makes it
serve loopback clients only, and authentication is on with a user and a random password
that exist only in the server's own config in its data folder. Its DICOM port is off (only
the REST API is used); no plugin is loaded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from pdata_sync.demo.ports import free_port, written_since
from pdata_sync.demo.prefect_server import stop_process

ORTHANC_BINARY = "/usr/sbin/Orthanc"
USER = "pdata-sync"


def orthanc_binary() -> str | None:
    """The Orthanc executable, or None when it is not installed."""
    if Path(ORTHANC_BINARY).exists():
        return ORTHANC_BINARY
    return shutil.which("Orthanc")


class _PortTaken(Exception):
    """Orthanc could not bind its HTTP port."""


class OrthancServer:
    """``with OrthancServer(dir) as orthanc:`` ``orthanc.url``, ``.user``, ``.password``,
    ``.http()`` (an authenticated client); ``stop()`` and ``start()`` again keep the data
    and the port."""

    def __init__(self, data_dir: str | Path, port: int = 0):
        self.data_dir = Path(data_dir)
        self.user = USER
        self.password = secrets.token_urlsafe(24)
        self.port = port  # 0: a free one
        self.proc: subprocess.Popen[bytes] | None = None
        self.proc_started = False  # a restart keeps the port (and the data)
        self.proc_returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(self.user, self.password), timeout=30)

    def start(self, timeout: float = 30.0) -> OrthancServer:
        """Start Orthanc and wait until it answers. A first start whose port another
        process took between the check and Orthanc's bind (two demos at once) is tried
        again on a free port rather than failing."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                if attempt == 2 or self.proc_started_ok:
                    raise RuntimeError(f"Orthanc: port {self.port} is in use") from None
                self.port = free_port()
        raise AssertionError("unreachable")

    proc_started_ok = False  # once it answered, a restart must keep its port

    def _start(self, timeout: float) -> OrthancServer:
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed (Debian: apt-get install orthanc)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # a port the last run's Orthanc left in TIME_WAIT is free: Orthanc binds with
        # SO_REUSEADDR (the catalog knows an Orthanc by its URL: a new port resends all)
        self.port = free_port(self.port, reuse=True) if not self.proc_started else self.port
        self.proc_started = True
        config = {
            "Name": "pdata-sync-test",
            "StorageDirectory": str(self.data_dir / "storage"),
            "IndexDirectory": str(self.data_dir / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [],
            "HttpDescribeErrors": True,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 16,
        }
        path = self.data_dir / "orthanc.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        self._log = open(self.data_dir / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop()
        written_before = self._log.tell()
        self.proc = subprocess.Popen(
            [binary, str(path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # stopped as its own group (prefect_server.stop_process)
        )
        deadline = time.monotonic() + timeout
        with self.http() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    log = self.data_dir / "orthanc.log"
                    self.stop()
                    if "already in use" in written_since(log, written_before):
                        raise _PortTaken
                    raise RuntimeError(f"Orthanc exited with {self.proc_returncode}; see {log}")
                try:
                    if client.get("/system").status_code == 200:
                        self.proc_started_ok = True
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc_returncode = self.proc.poll()
        stop_process(self.proc, timeout=10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def instances(self) -> list[str]:
        """Every instance id Orthanc holds."""
        with self.http() as client:
            response = client.get("/instances")
            response.raise_for_status()
            return list(response.json())

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
