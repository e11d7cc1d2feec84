"""What one Orthanc server holds of one clinic's images: a row per S3 key with the content
(sha256) Orthanc was given, Orthanc's ids, its answer and when (docs/orthanc.md).

A row whose status is *stored* or *already_stored* and whose sha256 is the image's verified
content means: no call to Orthanc is needed for it. A *rejected* row keeps Orthanc's reason:
that content is reported rejected on every run without being sent again (a changed file, or
a full run, sends it again). ``verify`` marks a row *missing* when Orthanc no longer has the
instance; the next sync stores it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from pdata_sync.catalog.database import Database
from pdata_sync.catalog.records import aware, now
from pdata_sync.catalog.schema import orthanc_instances as table
from pdata_sync.catalog.series import chunks

STORED = "stored"
ALREADY_STORED = "already_stored"
REJECTED = "rejected"
MISSING = "missing"
HELD = (STORED, ALREADY_STORED)


@dataclass(frozen=True)
class OrthancRow:
    key: str
    sha256: str
    instance_id: str | None  # None when rejected
    series_id: str | None
    study_id: str | None
    patient_id: str | None
    status: str
    stored_at: datetime  # when Orthanc answered
    reason: str | None = None  # Orthanc's words, when rejected


class OrthancRecords:
    """``OrthancRecords(db, clinic_id, server)``: the clinic's rows for one Orthanc."""

    def __init__(self, db: Database, clinic_id: str, server: str):
        self.db = db
        self.clinic_id = clinic_id
        self.server = server

    def _mine(self) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.clinic_id == self.clinic_id, table.c.server == self.server)

    @staticmethod
    def _row(r: sa.Row) -> OrthancRow:
        return OrthancRow(
            key=r.key,
            sha256=r.sha256,
            instance_id=r.instance_id,
            series_id=r.series_id,
            study_id=r.study_id,
            patient_id=r.patient_id,
            status=r.status,
            stored_at=aware(r.stored_at),
            reason=r.reason,
        )

    def lookup(self, keys: Sequence[str]) -> dict[str, OrthancRow]:
        found: dict[str, OrthancRow] = {}
        with self.db.engine.connect() as conn:
            for part in chunks(sorted(set(keys))):
                query = sa.select(table).where(self._mine(), table.c.key.in_(part))
                found.update({r.key: self._row(r) for r in conn.execute(query)})
        return found

    def held(self) -> list[OrthancRow]:
        """Every row Orthanc is recorded as holding."""
        query = sa.select(table).where(self._mine(), table.c.status.in_(HELD))
        with self.db.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query.order_by(table.c.key))]

    def record(self, stored: Iterable[OrthancRow], flow_run_id: str | None) -> None:
        """Record what Orthanc answered (one transaction; a key's earlier row is replaced)."""
        rows = list(stored)
        if not rows:
            return
        at = now()
        with self.db.begin() as conn:
            for part in chunks(rows):
                conn.execute(
                    table.delete().where(self._mine(), table.c.key.in_([r.key for r in part]))
                )
                conn.execute(
                    table.insert(),
                    [
                        {
                            "clinic_id": self.clinic_id,
                            "server": self.server,
                            "key": r.key,
                            "sha256": r.sha256,
                            "instance_id": r.instance_id,
                            "series_id": r.series_id,
                            "study_id": r.study_id,
                            "patient_id": r.patient_id,
                            "status": r.status,
                            "reason": r.reason,
                            "stored_at": r.stored_at,
                            "checked_at": at,
                            "flow_run_id": flow_run_id,
                        }
                        for r in part
                    ],
                )

    def checked(self, present: Sequence[str], missing: Sequence[str]) -> None:
        """What verify found: ``present`` keys confirmed now, ``missing`` ones marked so the
        next sync stores them again."""
        at = now()
        with self.db.begin() as conn:
            for part in chunks(sorted(present)):
                conn.execute(
                    table.update().where(self._mine(), table.c.key.in_(part)).values(checked_at=at)
                )
            for part in chunks(sorted(missing)):
                conn.execute(
                    table.update()
                    .where(self._mine(), table.c.key.in_(part))
                    .values(status=MISSING, checked_at=at)
                )
