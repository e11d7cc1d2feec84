"""Studies and series by DICOM UID: one row each per clinic, shared by concurrent writers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa

from pdata_sync.catalog.database import Database
from pdata_sync.catalog.schema import series, studies
from pdata_sync.source.dicom_meta import UNKNOWN, DicomHeader

CHUNK = 500


def chunks(values: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class SeriesRegistry:
    """The series id of a DICOM header's (study, series) UIDs, creating the rows once."""

    def __init__(self, db: Database):
        self.db = db
        self._cache: dict[tuple[str, str, str], int] = {}

    def register(self, clinic_id: str, headers: Iterable[DicomHeader], now: Any) -> None:
        """Make sure a study and series row exists for every header with known UIDs;
        safe against concurrent writers (insert-or-ignore, then read back)."""
        wanted: dict[tuple[str, str], str] = {}
        for h in headers:
            if UNKNOWN in (h.study_instance_uid, h.series_instance_uid):
                continue
            if (clinic_id, h.study_instance_uid, h.series_instance_uid) not in self._cache:
                wanted[(h.study_instance_uid, h.series_instance_uid)] = h.modality
        if not wanted:
            return
        study_uids = sorted({study for study, _ in wanted})
        found: dict[tuple[str, str, str], int] = {}
        with self.db.begin() as conn:
            conn.execute(
                self.db.insert_ignore(studies, ["clinic_id", "study_instance_uid"]),
                [
                    {"clinic_id": clinic_id, "study_instance_uid": u, "created_at": now}
                    for u in study_uids
                ],
            )
            study_ids: dict[str, int] = {}
            for chunk in chunks(study_uids):
                for r in conn.execute(
                    sa.select(studies.c.id, studies.c.study_instance_uid).where(
                        studies.c.clinic_id == clinic_id, studies.c.study_instance_uid.in_(chunk)
                    )
                ):
                    study_ids[r.study_instance_uid] = int(r.id)
            conn.execute(
                self.db.insert_ignore(series, ["study_id", "series_instance_uid"]),
                [
                    {
                        "study_id": study_ids[study],
                        "series_instance_uid": ser,
                        "modality": modality,
                        "created_at": now,
                    }
                    for (study, ser), modality in wanted.items()
                ],
            )
            by_study: dict[int, str] = {v: k for k, v in study_ids.items()}
            for chunk in chunks(sorted({ser for _, ser in wanted})):
                for r in conn.execute(
                    sa.select(series.c.id, series.c.study_id, series.c.series_instance_uid).where(
                        series.c.study_id.in_(list(by_study)),
                        series.c.series_instance_uid.in_(chunk),
                    )
                ):
                    study_uid = by_study[int(r.study_id)]
                    found[(clinic_id, study_uid, r.series_instance_uid)] = int(r.id)
        # shared with the other threads only now: an id from a transaction not yet committed
        # would fail their image rows' foreign key (PostgreSQL cannot see the row yet)
        self._cache.update(found)

    def id_of(self, clinic_id: str, header: DicomHeader) -> int | None:
        return self._cache.get((clinic_id, header.study_instance_uid, header.series_instance_uid))
