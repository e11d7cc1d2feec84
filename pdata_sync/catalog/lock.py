"""One lock per clinic, in the catalog database: held by every sync and verify of the clinic
(CLI and deployments alike), so two runs never interleave their catalog writes, abort each
other's multipart uploads, or audit what the other is re-uploading.

The holder is recorded (purpose, host, pid, flow run, since) and renews ``heartbeat_at``
from a background thread. A second run refuses with :class:`ClinicBusyError` naming the
holder. A lock is *stale*, and taken over (compare-and-swap on its token), when its holder
is a process of this host that no longer exists, or its heartbeat is older than
:data:`STALE_AFTER` (a holder on another host that died).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pdata_sync.base.errors import ClinicBusyError
from pdata_sync.catalog.database import Database
from pdata_sync.catalog.records import aware, now
from pdata_sync.catalog.schema import clinic_locks

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 30.0  # seconds
STALE_AFTER = timedelta(minutes=10)  # twenty missed heartbeats


@dataclass(frozen=True)
class Holder:
    purpose: str
    host: str
    pid: int
    flow_run_id: str | None
    acquired_at: datetime
    heartbeat_at: datetime
    token: str = ""

    @classmethod
    def of(cls, r: Any) -> Holder:
        return cls(
            r.purpose, r.host, int(r.pid), r.flow_run_id,
            aware(r.acquired_at), aware(r.heartbeat_at), r.token,
        )  # fmt: skip

    def describe(self) -> str:
        return (
            f"{self.purpose} by host {self.host} pid {self.pid} "
            f"(flow run {self.flow_run_id or 'none'}) since "
            f"{self.acquired_at:%Y-%m-%d %H:%M:%S}Z"
        )


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class ClinicLock:
    """``with ClinicLock(db, clinic_id, "sync", flow_run_id):`` - or refuse."""

    def __init__(
        self,
        db: Database,
        clinic_id: str,
        purpose: str,
        flow_run_id: str | None = None,
        *,
        stale_after: timedelta = STALE_AFTER,
        heartbeat_every: float = HEARTBEAT_EVERY,
    ):
        self.db = db
        self.clinic_id = clinic_id
        self.purpose = purpose
        self.flow_run_id = flow_run_id
        self.stale_after = stale_after
        self.heartbeat_every = heartbeat_every
        self.token = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.acquired_at: datetime | None = None
        self.taken_over: Holder | None = None  # the stale holder replaced, if any
        self.lost = False  # the heartbeat found the lock taken by another run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> Holder | None:
        with self.db.engine.connect() as conn:
            r = conn.execute(
                sa.select(clinic_locks).where(clinic_locks.c.clinic_id == self.clinic_id)
            ).first()
        return None if r is None else Holder.of(r)

    def is_stale(self, holder: Holder) -> bool:
        if holder.host == self.host and holder.pid != self.pid and not process_alive(holder.pid):
            return True
        return holder.heartbeat_at < now() - self.stale_after

    def acquire(self) -> None:
        t = now()
        row = {
            "clinic_id": self.clinic_id,
            "token": self.token,
            "purpose": self.purpose,
            "host": self.host,
            "pid": self.pid,
            "flow_run_id": self.flow_run_id,
            "acquired_at": t,
            "heartbeat_at": t,
        }
        for _ in range(3):
            try:
                with self.db.begin() as conn:
                    conn.execute(sa.insert(clinic_locks), row)
                self.acquired_at = t
                return
            except IntegrityError:
                pass
            holder = self.holder()
            if holder is None:
                continue  # released in between: try again
            if not self.is_stale(holder):
                raise ClinicBusyError(f"clinic {self.clinic_id} is busy: {holder.describe()}")
            with self.db.begin() as conn:
                taken = conn.execute(
                    sa.update(clinic_locks)
                    .where(
                        clinic_locks.c.clinic_id == self.clinic_id,
                        clinic_locks.c.token == holder.token,
                    )
                    .values(**row)
                ).rowcount
            if taken == 1:
                self.acquired_at = t
                self.taken_over = holder
                log.warning(
                    "clinic %s: took over a stale lock (%s)", self.clinic_id, holder.describe()
                )
                return
        raise ClinicBusyError(f"clinic {self.clinic_id} is busy: the lock keeps changing hands")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.db.begin() as conn:
            conn.execute(
                sa.delete(clinic_locks).where(
                    clinic_locks.c.clinic_id == self.clinic_id,
                    clinic_locks.c.token == self.token,
                )
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                with self.db.begin() as conn:
                    kept = conn.execute(
                        sa.update(clinic_locks)
                        .where(
                            clinic_locks.c.clinic_id == self.clinic_id,
                            clinic_locks.c.token == self.token,
                        )
                        .values(heartbeat_at=now())
                    ).rowcount
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("clinic %s: lock heartbeat failed: %s", self.clinic_id, exc)
                continue
            if kept != 1:
                self.lost = True
                log.error("clinic %s: the lock was taken over by another run", self.clinic_id)
                return

    def __enter__(self) -> ClinicLock:
        self.acquire()
        self._thread = threading.Thread(
            target=self._beat, name=f"lock-{self.clinic_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
