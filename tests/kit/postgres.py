"""Run a real PostgreSQL server on 127.0.0.1 for the tests and benchmarks (the catalog's
tests; the Prefect server of the fleet benchmark).

Uses Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``; ``make`` installs
them). The cluster lives in a fresh temporary folder, listens on 127.0.0.1 only (no Unix
socket outside that folder), requires a password (scram-sha-256) and is removed on exit.
As root, the server runs as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pdata_sync.demo.ports import free_port


def pg_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` that has ``initdb``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    return Path(found[-1]).parent


class PostgresServer:
    """``with PostgresServer() as pg:`` starts a cluster; ``pg.url(database, user)`` gives a
    SQLAlchemy URL without password; ``pg.superuser_password``; ``pg.execute(sql)``."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off for tests (speed); on for benchmarks (what production does)
        self.bin = pg_bin_dir()
        self.port = free_port()
        self.superuser = "pdata_test"
        self.superuser_password = secrets.token_urlsafe(16)
        self._dir: Path | None = None
        self._run_as: list[str] = []

    def _cmd(self, *args: str) -> list[str]:
        return [*self._run_as, *args]

    def __enter__(self) -> PostgresServer:
        # Not under pytest's tmp folders: those are private to root, and the server may run
        # as the postgres user.
        self._dir = Path(tempfile.mkdtemp(prefix="pdata-pg-"))
        data = self._dir / "data"
        pwfile = self._dir / "pw"
        pwfile.write_text(self.superuser_password)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self._dir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            self._cmd(
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                self.superuser,
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self._dir} -c fsync={'on' if self.fsync else 'off'} "
            "-c max_connections=100"
        )
        subprocess.run(
            self._cmd(
                str(self.bin / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self._dir / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ),
            check=True,
            capture_output=True,
        )
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start on 127.0.0.1")

    def __exit__(self, *exc: object) -> None:
        if self._dir is None:
            return
        subprocess.run(
            self._cmd(
                str(self.bin / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "fast", "stop"
            ),
            capture_output=True,
        )
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        """A SQLAlchemy URL (psycopg 3 driver) without password."""
        return f"postgresql+psycopg://{user or self.superuser}@127.0.0.1:{self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        """The superuser's URL with password, for test set-up only."""
        return (
            f"postgresql+psycopg://{self.superuser}:{self.superuser_password}"
            f"@127.0.0.1:{self.port}/{database}"
        )

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements as the superuser, each in autocommit (CREATE DATABASE needs it)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.admin_url(database), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.execute(sa.text(statement))
        finally:
            engine.dispose()

    def scalar(self, query: str, database: str = "postgres") -> Any:
        """The single value of ``query``, run as the superuser."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.admin_url(database))
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(query)).scalar()
        finally:
            engine.dispose()

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children)."""
        assert self._dir is not None
        return int((self._dir / "data" / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A database owned by a new login role; returns its URL without password."""
        self.execute(
            f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'",
            f"CREATE DATABASE {name} OWNER {owner}",
        )
        return self.url(name, owner)
