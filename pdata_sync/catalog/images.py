"""The image rows of one clinic in one destination, and their transitions.

Every write is one of the named transitions of :mod:`pdata_sync.catalog.states`, applied in
one transaction that also appends an ``image_events`` row per state change with the flow run
id. A transition applied to a row in a state it does not leave raises
:class:`~pdata_sync.catalog.states.IllegalTransition` and writes nothing. A legal hold is
recorded as an event too (``legal_hold_on`` / ``legal_hold_off``), changing no row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from pdata_sync.catalog.database import Database
from pdata_sync.catalog.records import ROW_COLUMNS, CatalogRow, PendingItem, Settled, now
from pdata_sync.catalog.schema import image_events, image_history, images, studies
from pdata_sync.catalog.schema import series as series_table
from pdata_sync.catalog.series import SeriesRegistry, chunks
from pdata_sync.catalog.states import (
    ACCEPT,
    ACCEPTED,
    BEGIN_UPLOAD,
    CONFIRM,
    CONTRADICT,
    DRIFTED,
    MATCH,
    PENDING,
    RECONFIRM,
    RELEASE,
    RETIRE,
    RETIRED,
    VERIFIED,
    ImageState,
    Transition,
)

# content columns every settle writes; MATCH of the same bytes leaves uploaded_at and
# flow_run_id alone (they say when and by which run those bytes went up)
_CONTENT = (
    "image_id",
    "patient_guid",
    "rel_path",
    "source_size",
    "source_mtime_ns",
    "sha256",
    "etag",
    "series_id",
    "sop_instance_uid",
    "modality",
    "acquisition_date",
    "source_defect",
    "image_name",
    "source_ctime_ns",
    "source_inode",
    "content_checked_at",
    "retain_until",
    "retired_to",
    "retired_reason",
    "state",
    "verified_at",
    "prior_state",
    "updated_at",
)
_UPLOAD_RECORD = ("uploaded_at", "flow_run_id")

# the columns of ClinicImages.inventory, in order (pdata-sync inventory)
INVENTORY_COLUMNS = (
    "key",
    "patient_guid",
    "image_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "modality",
    "acquisition_date",
    "size",
    "sha256",
    "state",
    "uploaded_at",
    "verified_at",
    "retain_until",
)


class ClinicImages:
    """``catalog.images(clinic_id, destination)``: the rows of one clinic in one bucket."""

    def __init__(self, db: Database, series: SeriesRegistry, clinic_id: str, destination: str):
        self.db = db
        self.series = series
        self.clinic_id = clinic_id
        self.destination = destination

    # -- helpers -------------------------------------------------------------------------

    def _mine(self) -> Any:
        return sa.and_(
            images.c.clinic_id == self.clinic_id, images.c.destination == self.destination
        )

    def _current(self, conn: sa.Connection, keys: Sequence[str], *columns: Any) -> dict[str, Any]:
        cols = columns or (images,)
        found: dict[str, Any] = {}
        for chunk in chunks(list(dict.fromkeys(keys))):
            for r in conn.execute(sa.select(*cols).where(self._mine(), images.c.key.in_(chunk))):
                found[r.key] = r
        return found

    def _events(
        self,
        conn: sa.Connection,
        transition: Transition,
        changes: Iterable[tuple[str, str | None, str | None]],
        flow_run_id: str | None,
        at: Any,
        detail: str | None = None,
    ) -> None:
        self._write_events(conn, transition.name, changes, flow_run_id, at, detail)

    def _write_events(
        self,
        conn: sa.Connection,
        name: str,
        changes: Iterable[tuple[str, str | None, str | None]],
        flow_run_id: str | None,
        at: Any,
        detail: str | None = None,
    ) -> None:
        """One ``image_events`` row per (key, state before, state after) in ``changes``,
        each with ``detail`` (what the event records beyond its states)."""
        rows = [
            {
                "clinic_id": self.clinic_id,
                "destination": self.destination,
                "key": key,
                "transition": name,
                "from_state": before,
                "to_state": after,
                "flow_run_id": flow_run_id,
                "at": at,
                "detail": detail,
            }
            for key, before, after in changes
        ]
        if rows:
            conn.execute(sa.insert(image_events), rows)

    # -- transitions ---------------------------------------------------------------------

    def _held_by_others(self, conn: sa.Connection, items: list[PendingItem]) -> dict[str, str]:
        """Keys of ``items`` that a row of another image holds in this destination, whatever
        its clinic or state, with why: a key is one image's, never shared (product-rules
        §3.1)."""
        wanted = {i.key: i.image_id for i in items}
        refused: dict[str, str] = {}
        for chunk in chunks(list(wanted)):
            query = sa.select(images.c.key, images.c.clinic_id, images.c.image_id).where(
                images.c.destination == self.destination, images.c.key.in_(chunk)
            )
            for r in conn.execute(query):
                if (r.clinic_id, int(r.image_id)) == (self.clinic_id, wanted[r.key]):
                    continue
                holder = "this clinic" if r.clinic_id == self.clinic_id else f"clinic {r.clinic_id}"
                refused[r.key] = (
                    f"key conflict: the catalog records {r.key} as image {r.image_id} of "
                    f"{holder}; image {wanted[r.key]} is not uploaded over it"
                )
        return refused

    def begin_upload(self, items: list[PendingItem], flow_run_id: str | None) -> dict[str, str]:
        """BEGIN_UPLOAD: these keys are about to be uploaded (before any of their bytes go).

        A new key gets a row without content; an existing row keeps its last accepted
        content (and path) until the new content is settled, and remembers the state it
        leaves, which :meth:`release` restores.

        Returns the keys refused, with why: a key that a row of another image (of this
        clinic or another) holds in this destination gets no pending row and must not be
        uploaded."""
        if not items:
            return {}
        t = now()
        with self.db.begin() as conn:
            refused = self._held_by_others(conn, items)
            items = [i for i in items if i.key not in refused]
            existing = self._current(
                conn,
                [i.key for i in items],
                images.c.id,
                images.c.key,
                images.c.state,
                images.c.prior_state,
            )
            new = [
                {
                    "clinic_id": self.clinic_id,
                    "destination": self.destination,
                    "key": i.key,
                    "image_id": i.image_id,
                    "patient_guid": i.patient_guid,
                    "rel_path": i.rel_path,
                    "state": PENDING,
                    "prior_state": None,
                    "pending_at": t,
                    "updated_at": t,
                }
                for i in dict((i.key, i) for i in items if i.key not in existing).values()
            ]
            if new:
                conn.execute(sa.insert(images), new)
            old = []
            for key, r in existing.items():
                BEGIN_UPLOAD.check(key, r.state)
                # a row left pending by an interrupted run keeps the state it had before
                prior = r.prior_state if r.state == PENDING else r.state
                old.append({"row_id": r.id, "p_prior": prior})
            if old:
                conn.execute(
                    sa.update(images)
                    .where(images.c.id == sa.bindparam("row_id"))
                    .values(
                        state=PENDING,
                        prior_state=sa.bindparam("p_prior"),
                        pending_at=t,
                        updated_at=t,
                    ),
                    old,
                )
            self._events(
                conn,
                BEGIN_UPLOAD,
                [(n["key"], None, PENDING) for n in new]
                + [(key, r.state, PENDING) for key, r in existing.items()],
                flow_run_id,
                t,
            )
        return refused

    def release(self, keys: list[str], flow_run_id: str | None = None) -> None:
        """RELEASE: the upload of these pending keys will not happen (bad input). A row that
        never had a state before goes; any other gets back the state it had."""
        if not keys:
            return
        t = now()
        with self.db.begin() as conn:
            rows = self._current(
                conn, keys, images.c.id, images.c.key, images.c.state, images.c.prior_state
            )
            for key, r in rows.items():
                RELEASE.check(key, r.state)
            gone = [r.id for r in rows.values() if r.prior_state is None]
            back = [
                {"row_id": r.id, "p_state": r.prior_state}
                for r in rows.values()
                if r.prior_state is not None
            ]
            for chunk in chunks(gone):
                conn.execute(sa.delete(images).where(images.c.id.in_(chunk)))
            if back:
                conn.execute(
                    sa.update(images)
                    .where(images.c.id == sa.bindparam("row_id"))
                    .values(state=sa.bindparam("p_state"), prior_state=None, updated_at=t),
                    back,
                )
            self._events(
                conn,
                RELEASE,
                [(k, PENDING, r.prior_state) for k, r in rows.items()],
                flow_run_id,
                t,
            )

    def settle(self, records: list[Settled], flow_run_id: str | None) -> None:
        """ACCEPT, CONFIRM or MATCH of pending keys, in one transaction.

        A row whose previously accepted content had another checksum keeps that content in
        ``image_history``."""
        if not records:
            return
        for rec in records:
            if rec.transition not in (ACCEPT, CONFIRM, MATCH):
                raise ValueError(f"settle cannot apply {rec.transition.name}")
        t = now()
        self.series.register(self.clinic_id, [r.info.header for r in records], t)
        with self.db.begin() as conn:
            old = self._current(conn, [r.key for r in records])
            history, full, content_only, changes = [], [], [], []
            for rec in records:
                prev = old.get(rec.key)
                rec.transition.check(rec.key, None if prev is None else prev.state)
                info = rec.info
                state = rec.transition.enters
                values = {
                    "image_id": info.image_id,
                    "patient_guid": info.patient_guid,
                    "rel_path": info.rel_path,
                    "source_size": info.size,
                    "source_mtime_ns": info.mtime_ns,
                    "sha256": info.sha256,
                    "etag": rec.etag,
                    "series_id": self.series.id_of(self.clinic_id, info.header),
                    "sop_instance_uid": info.header.sop_instance_uid,
                    "modality": info.header.modality,
                    "acquisition_date": info.header.acquisition_date,
                    "source_defect": (info.header.defect or "")[:200] or None,
                    "image_name": None if info.image_name is None else info.image_name[:300],
                    "source_ctime_ns": info.ctime_ns,
                    "source_inode": None if info.inode is None else str(info.inode),
                    "content_checked_at": t,  # its bytes were hashed for this record
                    "state": state,
                    "verified_at": t if state == VERIFIED else None,
                    "prior_state": None,
                    # back in images/: the retirement is history (its event stays)
                    "retired_to": None,
                    "retired_reason": None,
                    "updated_at": t,
                }
                # the lock of the version S3 holds: a new upload's own (None: written
                # without one); a MATCH wrote nothing, so the version keeps the date it had
                values["retain_until"] = (
                    prev.retain_until if rec.transition is MATCH else info.retain_until
                )
                changes.append((rec.key, prev.state, state))
                accepted = prev.verified_at is not None or prev.uploaded_at is not None
                if prev.sha256 is not None and prev.sha256 != info.sha256 and accepted:
                    history.append(
                        {
                            "image_row_id": prev.id,
                            "sha256": prev.sha256,
                            "source_size": prev.source_size,
                            "source_mtime_ns": prev.source_mtime_ns,
                            "etag": prev.etag,
                            "state": prev.prior_state
                            or (VERIFIED if prev.verified_at is not None else ACCEPTED),
                            "verified_at": prev.verified_at,
                            "replaced_at": t,
                            "replaced_by_flow_run_id": flow_run_id,
                            "kept_at": rec.kept_at,
                        }
                    )
                row = {"row_id": prev.id, **{f"v_{k}": v for k, v in values.items()}}
                if rec.transition is MATCH and prev.sha256 == info.sha256:
                    content_only.append(row)
                    continue
                if rec.transition is MATCH:  # bytes this catalog never saw go up: unknown
                    upload = {"uploaded_at": None, "flow_run_id": None}
                else:
                    upload = {"uploaded_at": rec.uploaded_at, "flow_run_id": flow_run_id}
                full.append({**row, **{f"v_{k}": v for k, v in upload.items()}})
            if history:
                conn.execute(sa.insert(image_history), history)
            for rows, columns in ((full, _CONTENT + _UPLOAD_RECORD), (content_only, _CONTENT)):
                if rows:
                    conn.execute(
                        sa.update(images)
                        .where(images.c.id == sa.bindparam("row_id"))
                        .values({c: sa.bindparam(f"v_{c}") for c in columns}),
                        rows,
                    )
            for transition in (ACCEPT, CONFIRM, MATCH):
                self._events(
                    conn,
                    transition,
                    [
                        c
                        for c, r in zip(changes, records, strict=True)
                        if r.transition is transition
                    ],
                    flow_run_id,
                    t,
                )

    def reconfirm(self, keys: Sequence[str], flow_run_id: str | None = None) -> None:
        """RECONFIRM: a listing shows these keys with their verified size and ETag
        (``checked_at`` renewed, a ``verified_at`` in the future brought back to now; a
        drifted row is verified again: S3 holds those bytes)."""
        self._listing(RECONFIRM, keys, flow_run_id)

    def contradict(self, keys: Sequence[str], flow_run_id: str | None = None) -> None:
        """CONTRADICT: a listing shows these keys missing or different from what was
        verified. Nothing is stamped: a contradicted row is not confirmed."""
        self._listing(CONTRADICT, keys, flow_run_id)

    def record_hold(self, keys: Sequence[str], status: str, flow_run_id: str | None) -> None:
        """A legal hold set (``status`` ON) or cleared (OFF) on every version of these
        keys' objects: an event per key (``legal_hold_on`` / ``legal_hold_off``), its state
        unchanged (None where the catalog has no row, e.g. on a new machine). A hold is not
        a transition of the row's lifecycle: nothing else about the row changes."""
        if status not in ("ON", "OFF"):
            raise ValueError(f"legal hold status {status!r}: ON or OFF")
        if not keys:
            return
        t = now()
        with self.db.begin() as conn:
            rows = self._current(conn, keys, images.c.key, images.c.state)
            states = [(k, rows[k].state if k in rows else None) for k in dict.fromkeys(keys)]
            changes = [(key, state, state) for key, state in states]
            self._write_events(conn, f"legal_hold_{status.lower()}", changes, flow_run_id, t)

    def retire(self, key: str, retired_to: str, reason: str, flow_run_id: str | None) -> None:
        """RETIRE: the object of ``key`` no longer belongs; it now lives at ``retired_to``
        (outside ``images/``). The row stays, for the record; a file that comes back under
        the same key starts a new upload from here."""
        t = now()
        with self.db.begin() as conn:
            rows = self._current(conn, [key], images.c.key, images.c.state)
            RETIRE.check(key, rows[key].state if key in rows else None)
            conn.execute(
                sa.update(images)
                .where(self._mine(), images.c.key == key)
                .values(
                    state=RETIRED,
                    retired_to=retired_to[:1200],
                    retired_reason=reason[:200],
                    updated_at=t,
                )
            )
            # the row's retired_to is cleared if the file comes back; the event keeps it
            moved = f"{retired_to} ({reason})"[:1500]
            self._events(conn, RETIRE, [(key, rows[key].state, RETIRED)], flow_run_id, t, moved)

    def _listing(self, transition: Transition, keys: Sequence[str], run: str | None) -> None:
        if not keys:
            return
        t = now()
        with self.db.begin() as conn:
            rows = self._current(conn, keys, images.c.key, images.c.state)
            for key in keys:
                transition.check(key, rows[key].state if key in rows else None)
            target = transition.enters
            assert target is not None
            values: dict[str, Any] = {"state": target, "updated_at": t}
            if transition is RECONFIRM:
                values["checked_at"] = t
                # a verification dated by a clock that ran ahead is confirmed now: left in the
                # future, no run would ever trust the row again (it is listed every night)
                values["verified_at"] = sa.case(
                    (images.c.verified_at > t, t), else_=images.c.verified_at
                )
            for chunk in chunks(list(rows)):
                conn.execute(
                    sa.update(images).where(self._mine(), images.c.key.in_(chunk)).values(**values)
                )
            changed = [(k, r.state, target) for k, r in rows.items() if r.state != target]
            self._events(conn, transition, changed, run, t)

    # -- reading -------------------------------------------------------------------------

    def lookup(self, keys: Iterable[str]) -> dict[str, CatalogRow]:
        """Rows of ``keys`` (any state), by key."""
        columns = [images.c[c] for c in ROW_COLUMNS]
        with self.db.engine.connect() as conn:
            return {
                k: CatalogRow.of(r) for k, r in self._current(conn, list(keys), *columns).items()
            }

    def verified_of_patients(self, guids: Iterable[str]) -> dict[str, CatalogRow]:
        """Verified rows under these patientGuids, by key: what a listing of their prefixes
        can contradict."""
        columns = [images.c[c] for c in ROW_COLUMNS]
        found: dict[str, CatalogRow] = {}
        with self.db.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(guids))):
                result = conn.execute(
                    sa.select(*columns).where(
                        self._mine(),
                        images.c.state == VERIFIED,
                        images.c.patient_guid.in_(chunk),
                    )
                )
                found.update((r.key, CatalogRow.of(r)) for r in result)
        return found

    def archived(
        self, guids: Iterable[str] = (), study_uids: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """What the archive should hold for these patients or studies: every row that S3
        held once (verified, or drifted since) and that is not retired, with its study UID
        (``key, patient_guid, rel_path, sha256, state, sop_instance_uid, study_instance_uid``),
        by key."""
        from pdata_sync.catalog.schema import studies

        query = (
            sa.select(
                images.c.key,
                images.c.patient_guid,
                images.c.rel_path,
                images.c.sha256,
                images.c.state,
                images.c.sop_instance_uid,
                studies.c.study_instance_uid,
            )
            .select_from(
                images.outerjoin(series_table, images.c.series_id == series_table.c.id).outerjoin(
                    studies, series_table.c.study_id == studies.c.id
                )
            )
            .where(self._mine(), images.c.state.in_([VERIFIED, DRIFTED]))
        )
        found: dict[str, dict[str, Any]] = {}
        with self.db.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(guids))):
                for r in conn.execute(query.where(images.c.patient_guid.in_(chunk))):
                    found[r.key] = dict(r._mapping)
            for chunk in chunks(list(dict.fromkeys(study_uids))):
                for r in conn.execute(query.where(studies.c.study_instance_uid.in_(chunk))):
                    found[r.key] = dict(r._mapping)
        return [found[k] for k in sorted(found)]

    def archived_images(self, image_ids: Iterable[int]) -> list[tuple[int, str, str | None]]:
        """(image id, key, image name) of every row of these images that is not retired, in
        any of the clinic's destinations, this one's first: what the archive holds of them,
        and the name their media row gave them (None: no row, or recorded before names
        were). A name is the image's, whichever bucket it was archived in."""
        found: list[tuple[int, str, str | None]] = []
        here = images.c.destination == self.destination
        query = (
            sa.select(images.c.image_id, images.c.key, images.c.image_name)
            .where(images.c.clinic_id == self.clinic_id, images.c.state != RETIRED)
            .order_by(sa.case((here, 0), else_=1), images.c.id)
        )
        with self.db.engine.connect() as conn:
            for chunk in chunks(sorted(set(image_ids))):
                for r in conn.execute(query.where(images.c.image_id.in_(chunk))):
                    found.append((int(r.image_id), r.key, r.image_name))
        return found

    def least_recently_hashed(self, limit: int) -> list[CatalogRow]:
        """Up to ``limit`` verified rows whose source bytes were hashed longest ago (never,
        first): the rolling content check's slice for one run."""
        if limit <= 0:
            return []
        columns = [images.c[c] for c in ROW_COLUMNS]
        query = (
            sa.select(*columns)
            .where(self._mine(), images.c.state == VERIFIED)
            .order_by(sa.nulls_first(images.c.content_checked_at.asc()), images.c.id)
            .limit(limit)
        )
        with self.db.engine.connect() as conn:
            return [CatalogRow.of(r) for r in conn.execute(query)]

    def hashed(self, keys: Sequence[str], at: Any = None) -> None:
        """The source files of these keys were hashed again and still hold the recorded
        content: ``content_checked_at`` renewed. Not a state change (no event), like the
        confirmation time a listing renews."""
        if not keys:
            return
        t = at or now()
        with self.db.begin() as conn:
            for chunk in chunks(list(keys)):
                conn.execute(
                    sa.update(images)
                    .where(self._mine(), images.c.key.in_(chunk))
                    .values(content_checked_at=t)
                )

    def archived_count(self) -> int:
        """How many rows of this clinic in this destination may stand for an object under
        ``images/`` (every state but retired): what the safety limit is relative to."""
        query = sa.select(sa.func.count()).where(self._mine(), images.c.state != RETIRED)
        with self.db.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def archived_image_count(self) -> int:
        """How many images of the clinic the archive holds a live object of, in any of its
        destinations (an image under two patientGuids, or in two buckets, counts once)."""
        query = sa.select(sa.func.count(sa.distinct(images.c.image_id))).where(
            images.c.clinic_id == self.clinic_id, images.c.state != RETIRED
        )
        with self.db.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def rows(self) -> list[CatalogRow]:
        """Every image row, ordered by key."""
        columns = [images.c[c] for c in ROW_COLUMNS]
        with self.db.engine.connect() as conn:
            result = conn.execute(sa.select(*columns).where(self._mine()).order_by(images.c.key))
            return [CatalogRow.of(r) for r in result]

    def rows_in_folders(self, folders: Iterable[str]) -> list[CatalogRow]:
        """The image rows whose files are (or were) in these PDATA folders, ordered by key:
        what an incremental run's retirement needs, without reading the whole clinic."""
        wanted = set(folders)
        columns = [images.c[c] for c in ROW_COLUMNS]
        found: list[CatalogRow] = []
        with self.db.engine.connect() as conn:
            for chunk in chunks(sorted(wanted), 100):
                # folder names are P_{digits}: LIKE's "_" wildcard can only over-match, and
                # the exact folder is checked below
                near = sa.or_(*[images.c.rel_path.like(f"{name}/%") for name in chunk])
                for r in conn.execute(sa.select(*columns).where(self._mine(), near)):
                    if r.rel_path.split("/", 1)[0] in wanted:
                        found.append(CatalogRow.of(r))
        return sorted(found, key=lambda row: row.key)

    def history(self, key: str) -> list[dict[str, Any]]:
        """Earlier contents of one key, oldest first."""
        with self.db.engine.connect() as conn:
            result = conn.execute(
                sa.select(image_history)
                .join(images, image_history.c.image_row_id == images.c.id)
                .where(self._mine(), images.c.key == key)
                .order_by(image_history.c.id)
            )
            return [dict(r._mapping) for r in result]

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        """State changes of one key (or all keys), oldest first."""
        query = sa.select(image_events).where(
            image_events.c.clinic_id == self.clinic_id,
            image_events.c.destination == self.destination,
        )
        if key is not None:
            query = query.where(image_events.c.key == key)
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(image_events.c.id))]

    def inventory(self) -> list[dict[str, Any]]:
        """One row per image of this clinic in this destination, in key order: what the
        archive holds and in which state (:data:`INVENTORY_COLUMNS`). No names, no paths
        on the share: nothing in it identifies a person outside the platform."""
        query = (
            sa.select(
                images.c.key,
                images.c.patient_guid,
                images.c.image_id,
                studies.c.study_instance_uid,
                series_table.c.series_instance_uid,
                images.c.sop_instance_uid,
                images.c.modality,
                images.c.acquisition_date,
                images.c.source_size.label("size"),
                images.c.sha256,
                images.c.state,
                images.c.uploaded_at,
                images.c.verified_at,
                images.c.retain_until,
            )
            .select_from(
                images.outerjoin(series_table, images.c.series_id == series_table.c.id).outerjoin(
                    studies, series_table.c.study_id == studies.c.id
                )
            )
            .where(self._mine())
            .order_by(images.c.key)
        )
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def audit(
        self,
        *,
        key: str | None = None,
        flow_run_id: str | None = None,
        patient_guid: str | None = None,
    ) -> list[dict[str, Any]]:
        """The recorded history of one key, of what one flow run did, or of one patient's
        keys: every event (transition, states, run, time, its own ``detail``: for a retire,
        where the copy went and why) oldest first, with the row's image id."""
        query = (
            sa.select(
                image_events.c.key,
                image_events.c.transition,
                image_events.c.from_state,
                image_events.c.to_state,
                image_events.c.flow_run_id,
                image_events.c.at,
                image_events.c.detail,
                images.c.image_id,
            )
            .select_from(
                image_events.outerjoin(
                    images,
                    sa.and_(
                        images.c.key == image_events.c.key,
                        images.c.clinic_id == image_events.c.clinic_id,
                        images.c.destination == image_events.c.destination,
                    ),
                )
            )
            .where(
                image_events.c.clinic_id == self.clinic_id,
                image_events.c.destination == self.destination,
            )
        )
        if key is not None:
            query = query.where(image_events.c.key == key)
        if flow_run_id is not None:
            query = query.where(image_events.c.flow_run_id == flow_run_id)
        if patient_guid is not None:
            prefix = f"images/{patient_guid}/"
            query = query.where(image_events.c.key.startswith(prefix, autoescape=True))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query.order_by(image_events.c.id))
            return [dict(r._mapping) for r in rows]

    def run_changes(self, flow_run_id: str) -> list[dict[str, Any]]:
        """What one flow run changed in S3, per key, for the run's record: ``uploaded`` (a
        key S3 had no verified bytes of before), ``re-uploaded`` (new content, or the same
        bytes again after S3 was found not to hold them) and ``retired``, each with its
        image id and why. Re-uploads and retirements first, then uploads, in key order."""
        written = ("confirm", "accept", "retire")
        with self.db.engine.connect() as conn:
            events = conn.execute(
                sa.select(image_events.c.key, image_events.c.transition)
                .where(
                    image_events.c.clinic_id == self.clinic_id,
                    image_events.c.destination == self.destination,
                    image_events.c.flow_run_id == flow_run_id,
                    image_events.c.transition.in_(written),
                )
                .order_by(image_events.c.id)
            ).all()
            keys = list(dict.fromkeys(e.key for e in events))
            rows = self._current(conn, keys)
            replaced = {
                r.key: r.kept_at
                for r in conn.execute(
                    sa.select(images.c.key, image_history.c.kept_at)
                    .join(images, image_history.c.image_row_id == images.c.id)
                    .where(self._mine(), image_history.c.replaced_by_flow_run_id == flow_run_id)
                )
            }
            before = (
                {
                    r.key
                    for r in conn.execute(
                        sa.select(image_events.c.key).where(
                            image_events.c.clinic_id == self.clinic_id,
                            image_events.c.destination == self.destination,
                            image_events.c.key.in_(keys),
                            image_events.c.transition.in_(("confirm", "accept")),
                            image_events.c.flow_run_id != flow_run_id,
                        )
                    )
                }
                if keys
                else set()
            )
        last = {e.key: e.transition for e in events}
        changes = []
        for key in keys:
            row = rows.get(key)
            image_id = None if row is None else row.image_id
            if last[key] == "retire":
                why = (row.retired_reason if row is not None else None) or ""
                changes.append({"key": key, "image_id": image_id, "change": "retired",
                                "reason": why})  # fmt: skip
            elif key in replaced:
                kept = replaced[key]
                why = "new content" + (f"; the old kept at {kept}" if kept else "")
                changes.append({"key": key, "image_id": image_id, "change": "re-uploaded",
                                "reason": why})  # fmt: skip
            elif key in before:
                why = "S3 did not hold the verified bytes, or not as configured: sent again"
                changes.append({"key": key, "image_id": image_id, "change": "re-uploaded",
                                "reason": why})  # fmt: skip
            else:
                changes.append({"key": key, "image_id": image_id, "change": "uploaded",
                                "reason": ""})  # fmt: skip
        order = {"re-uploaded": 0, "retired": 1, "uploaded": 2}
        return sorted(changes, key=lambda c: (order[c["change"]], c["key"]))

    def verified_totals(self) -> tuple[int, int]:
        """How many objects of this clinic S3 confirmed in this destination, and their bytes:
        what a backfill has archived so far."""
        query = sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(images.c.source_size), 0)
        ).where(self._mine(), images.c.state == VERIFIED)
        with self.db.engine.connect() as conn:
            count, size = conn.execute(query).one()
        return int(count or 0), int(size or 0)

    def state_counts(self) -> dict[str, int]:
        with self.db.engine.connect() as conn:
            result = conn.execute(
                sa.select(images.c.state, sa.func.count())
                .where(self._mine())
                .group_by(images.c.state)
            )
            return {ImageState(state): int(n) for state, n in result}


__all__ = ["ClinicImages", "DRIFTED"]
