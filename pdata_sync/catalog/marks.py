"""What incremental runs compare against (docs/adr/0010-incremental-runs.md): per clinic,
destination and Sidexis patient the digest recorded when a run last handled the patient's
folder completely, and the last full run with the settings it ran under.

Everything a run records is written in one transaction at its end: a run that stops early
records nothing, so the next run reads again what this one did not finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import sqlalchemy as sa

from pdata_sync.catalog.database import Database
from pdata_sync.catalog.records import aware, now
from pdata_sync.catalog.schema import full_runs, patient_marks
from pdata_sync.catalog.series import chunks
from pdata_sync.source.changes import LastFull


class SyncMarks:
    """``SyncMarks(db, clinic_id, destination)``: one clinic's marks in one destination."""

    def __init__(self, db: Database, clinic_id: str, destination: str):
        self.db = db
        self.clinic_id = clinic_id
        self.destination = destination

    def _mine(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.clinic_id == self.clinic_id, table.c.destination == self.destination)

    def last_full(self) -> LastFull | None:
        query = sa.select(full_runs.c.started_at, full_runs.c.settings).where(self._mine(full_runs))
        with self.db.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        started = aware(row.started_at)
        assert started is not None
        return LastFull(at=started, settings=row.settings)

    def latest(self) -> datetime | None:
        """When the newest patient mark was recorded (None: there is none)."""
        query = sa.select(sa.func.max(patient_marks.c.recorded_at)).where(self._mine(patient_marks))
        with self.db.engine.connect() as conn:
            return aware(conn.execute(query).scalar())

    def digests(self) -> dict[int, str]:
        query = sa.select(patient_marks.c.patient_id, patient_marks.c.digest).where(
            self._mine(patient_marks)
        )
        with self.db.engine.connect() as conn:
            return {int(pid): digest for pid, digest in conn.execute(query)}

    def record(
        self,
        keep: Mapping[int, str],
        forget: Iterable[int],
        *,
        full_started_at: datetime | None,
        settings: str,
        flow_run_id: str | None,
    ) -> None:
        """Store ``keep``'s digests and drop ``forget``'s, in one transaction; a full run
        (``full_started_at``) also replaces the clinic's whole set (patients it did not keep
        are dropped) and becomes the last full run."""
        at = now()
        with self.db.begin() as conn:
            if full_started_at is not None:
                conn.execute(patient_marks.delete().where(self._mine(patient_marks)))
                conn.execute(full_runs.delete().where(self._mine(full_runs)))
                conn.execute(
                    full_runs.insert().values(
                        clinic_id=self.clinic_id,
                        destination=self.destination,
                        started_at=full_started_at,
                        settings=settings,
                        flow_run_id=flow_run_id,
                    )
                )
            else:
                self._delete(conn, sorted(set(forget) | set(keep)))
            rows = [
                {
                    "clinic_id": self.clinic_id,
                    "destination": self.destination,
                    "patient_id": pid,
                    "digest": digest,
                    "recorded_at": at,
                    "flow_run_id": flow_run_id,
                }
                for pid, digest in sorted(keep.items())
            ]
            for part in chunks(rows):
                conn.execute(patient_marks.insert(), part)

    def forget(self, patient_ids: Iterable[int]) -> None:
        """Drop these patients' digests: the next run reads their folders whatever the
        database says (``verify`` found one of their objects missing or changed)."""
        with self.db.begin() as conn:
            self._delete(conn, sorted(set(patient_ids)))

    def _delete(self, conn: sa.Connection, patient_ids: list[int]) -> None:
        for part in chunks(patient_ids):
            conn.execute(
                patient_marks.delete().where(
                    self._mine(patient_marks), patient_marks.c.patient_id.in_(part)
                )
            )
