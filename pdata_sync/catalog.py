"""The image catalog: every object pdata-sync put in S3, its source and its proof.

One row per object (clinic id + key), grouped into series and studies by the DICOM UIDs.
An image row moves ``pending -> uploaded -> verified``: *pending* is written before the
upload starts, *uploaded* when S3 accepted the body (its checksum checked by S3), *verified*
only after S3 reported back the size and checksum of what it stores and they matched the
local file (docs/adr/0004-catalog-and-acknowledged-uploads.md). ``checked_at`` is the last
time a listing showed the object with that size and ETag again; ``verify`` marks a row
*drifted* when S3 no longer holds what was verified (docs/adr/0005). A source that changes
keeps its history: the previous checksum, size and times go to ``image_history``.

SQLite (default, one file per worker) or PostgreSQL; the schema is created and upgraded by
Alembic migrations (``pdata_sync/catalog_migrations``) when the catalog is opened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .dicom_meta import UNKNOWN, DicomHeader
from .errors import ConfigError

PENDING = "pending"
UPLOADED = "uploaded"
VERIFIED = "verified"
DRIFTED = "drifted"  # was verified; S3 no longer holds that content (found by verify)
STATES = (PENDING, UPLOADED, VERIFIED, DRIFTED)

VERSION_TABLE = "pdata_sync_catalog_version"
# The newest migration; opening a catalog already at it skips Alembic (and its ~0.5 s import).
# tests/integration/test_catalog.py checks it against the migration scripts.
HEAD_REVISION = "0002"
MIGRATIONS = Path(__file__).parent / "catalog_migrations"
_LOOKUP_CHUNK = 500
# the columns :meth:`Catalog.settle` writes
_SETTLED_COLUMNS = (
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
    "state",
    "uploaded_at",
    "verified_at",
    "flow_run_id",
    "updated_at",
)

metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("clinic_id", sa.String(64), nullable=False),
    sa.Column("study_instance_uid", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("clinic_id", "study_instance_uid", name="uq_studies_clinic_uid"),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("modality", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("study_id", "series_instance_uid", name="uq_series_study_uid"),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("clinic_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("image_id", sa.BigInteger, nullable=False),
    sa.Column("patient_guid", sa.String(36), nullable=False),
    sa.Column("rel_path", sa.String(1024), nullable=False),
    # content columns stay empty while a new key is only pending
    sa.Column("source_size", sa.BigInteger, nullable=True),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("etag", sa.String(80), nullable=True),
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), nullable=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=True),
    sa.Column("modality", sa.String(16), nullable=True),
    sa.Column("acquisition_date", sa.String(16), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("pending_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("clinic_id", "key", name="uq_images_clinic_key"),
    sa.CheckConstraint(
        "state IN ('pending', 'uploaded', 'verified', 'drifted')", name="ck_images_state"
    ),
)
sa.Index("ix_images_clinic_state", images.c.clinic_id, images.c.state)

image_history = sa.Table(
    "image_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_row_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("source_size", sa.BigInteger, nullable=False),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.String(80), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("replaced_by_flow_run_id", sa.String(64), nullable=True),
)
sa.Index("ix_image_history_image", image_history.c.image_row_id)


@dataclass(frozen=True)
class SourceInfo:
    """What was read from one source file: the facts a catalog row records."""

    rel_path: str
    image_id: int
    patient_guid: str
    size: int
    mtime_ns: int
    sha256: str
    header: DicomHeader


@dataclass(frozen=True)
class PendingItem:
    """A key about to be uploaded, and where from."""

    key: str
    rel_path: str
    image_id: int
    patient_guid: str


@dataclass(frozen=True)
class Settled:
    """What became of one key: S3 accepted (*uploaded*) or confirmed (*verified*) it."""

    key: str
    info: SourceInfo
    state: str  # UPLOADED or VERIFIED
    etag: str
    uploaded_at: datetime | None
    verified_at: datetime | None


@dataclass(frozen=True)
class CatalogRow:
    """One image row as the uploader and ``verify`` need it."""

    key: str
    rel_path: str
    patient_guid: str
    size: int | None  # None until the first content is settled
    mtime_ns: int | None
    sha256: str | None
    etag: str | None
    state: str
    # the last time S3 confirmed this content: by the upload's answer or a later listing
    confirmed_at: datetime | None = None


def _chunks(values: list[Any], size: int = _LOOKUP_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def now() -> datetime:
    return datetime.now(UTC)


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


# what :class:`CatalogRow` needs (a no-change run reads one row per image)
_ROW_COLUMNS = [
    images.c[name]
    for name in (
        "key",
        "rel_path",
        "patient_guid",
        "source_size",
        "source_mtime_ns",
        "sha256",
        "etag",
        "state",
        "verified_at",
        "checked_at",
    )
]


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything the catalog writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _row(r: Any) -> CatalogRow:
    times = [t for t in (_aware(r.verified_at), _aware(r.checked_at)) if t is not None]
    return CatalogRow(
        key=r.key,
        rel_path=r.rel_path,
        patient_guid=r.patient_guid,
        size=None if r.source_size is None else int(r.source_size),
        mtime_ns=None if r.source_mtime_ns is None else int(r.source_mtime_ns),
        sha256=r.sha256,
        etag=r.etag,
        state=r.state,
        confirmed_at=max(times) if times else None,
    )


class Catalog:
    """The catalog of one database; thread-safe (one engine, a connection per call)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.is_sqlite = engine.url.get_backend_name() == "sqlite"
        # SQLite has one writer at a time; serialising our own threads avoids lock waits.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._series_cache: dict[tuple[str, str, str], int] = {}

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, password: str | None = None, *, migrate: bool = True) -> Catalog:
        """Connect to the catalog at ``url`` and bring its schema up to date.

        Raises :class:`ConfigError` naming the database when it cannot be reached.
        """
        sa_url = make_url(url)
        if password:
            sa_url = sa_url.set(password=password)
        kwargs: dict[str, Any] = {}
        if sa_url.get_backend_name() == "sqlite":
            path = sa_url.database or ""
            if not path or path == ":memory:":
                raise ConfigError("catalog.url: an SQLite catalog must be a file")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"catalog: cannot create the folder of {path}: {exc.strerror}"
                ) from None
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        else:
            kwargs.update(pool_size=20, pool_pre_ping=True)
        try:
            engine = sa.create_engine(sa_url, **kwargs)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"catalog {_safe(sa_url)}: {exc}") from None
        if sa_url.get_backend_name() == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        catalog = cls(engine)
        try:
            with engine.connect():
                pass
        except DBAPIError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ConfigError(f"catalog {_safe(sa_url)}: cannot connect: {reason[:300]}") from None
        if migrate:
            catalog.migrate()
        return catalog

    def schema_revision(self) -> str | None:
        """The migration the database is at; None for a new (empty) catalog."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        if self.schema_revision() == HEAD_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        lock = self._write_lock or threading.Lock()
        with lock, self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._write_lock, self.engine.begin() as conn:
                yield conn

    def _insert_ignore(self, table: sa.Table, index: list[str]) -> Any:
        """``INSERT ... ON CONFLICT DO NOTHING`` in this database's dialect."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table).on_conflict_do_nothing(index_elements=index)

    def _series_ids(self, clinic_id: str, headers: Iterable[DicomHeader]) -> None:
        """Make sure a study and series row exists for every header with known UIDs
        (filling ``self._series_cache``); safe against concurrent writers."""
        wanted: dict[tuple[str, str], str] = {}
        for h in headers:
            if UNKNOWN in (h.study_instance_uid, h.series_instance_uid):
                continue
            cache_key = (clinic_id, h.study_instance_uid, h.series_instance_uid)
            if cache_key not in self._series_cache:
                wanted[(h.study_instance_uid, h.series_instance_uid)] = h.modality
        if not wanted:
            return
        t = now()
        study_uids = sorted({study for study, _ in wanted})
        with self._begin() as conn:
            conn.execute(
                self._insert_ignore(studies, ["clinic_id", "study_instance_uid"]),
                [
                    {"clinic_id": clinic_id, "study_instance_uid": u, "created_at": t}
                    for u in study_uids
                ],
            )
            study_ids: dict[str, int] = {}
            for chunk in _chunks(study_uids):
                for r in conn.execute(
                    sa.select(studies.c.id, studies.c.study_instance_uid).where(
                        studies.c.clinic_id == clinic_id, studies.c.study_instance_uid.in_(chunk)
                    )
                ):
                    study_ids[r.study_instance_uid] = int(r.id)
            conn.execute(
                self._insert_ignore(series, ["study_id", "series_instance_uid"]),
                [
                    {
                        "study_id": study_ids[study],
                        "series_instance_uid": ser,
                        "modality": modality,
                        "created_at": t,
                    }
                    for (study, ser), modality in wanted.items()
                ],
            )
            by_study: dict[int, str] = {v: k for k, v in study_ids.items()}
            for chunk in _chunks(sorted({ser for _, ser in wanted})):
                for r in conn.execute(
                    sa.select(series.c.id, series.c.study_id, series.c.series_instance_uid).where(
                        series.c.study_id.in_(list(by_study)),
                        series.c.series_instance_uid.in_(chunk),
                    )
                ):
                    study_uid = by_study[int(r.study_id)]
                    self._series_cache[(clinic_id, study_uid, r.series_instance_uid)] = int(r.id)

    def _series_of(self, clinic_id: str, header: DicomHeader) -> int | None:
        return self._series_cache.get(
            (clinic_id, header.study_instance_uid, header.series_instance_uid)
        )

    def mark_pending(
        self, clinic_id: str, items: list[PendingItem], flow_run_id: str | None
    ) -> None:
        """Record that these keys are about to be uploaded (before any of their bytes go).

        A new key gets a row with no content yet; an existing row keeps its last accepted
        content (checksum, size, ETag, times) until the new content is settled, so that
        content can still move to the history then.
        """
        if not items:
            return
        t = now()
        with self._begin() as conn:
            existing: dict[str, int] = {}
            for chunk in _chunks([i.key for i in items]):
                for r in conn.execute(
                    sa.select(images.c.id, images.c.key).where(
                        images.c.clinic_id == clinic_id, images.c.key.in_(chunk)
                    )
                ):
                    existing[r.key] = int(r.id)
            new = [
                {
                    "clinic_id": clinic_id,
                    "key": i.key,
                    "image_id": i.image_id,
                    "patient_guid": i.patient_guid,
                    "rel_path": i.rel_path,
                    "state": PENDING,
                    "pending_at": t,
                    "flow_run_id": flow_run_id,
                    "updated_at": t,
                }
                for i in items
                if i.key not in existing
            ]
            if new:
                conn.execute(sa.insert(images), new)
            old = [
                {"row_id": existing[i.key], "p_rel_path": i.rel_path}
                for i in items
                if i.key in existing
            ]
            if old:
                conn.execute(
                    sa.update(images)
                    .where(images.c.id == sa.bindparam("row_id"))
                    .values(
                        state=PENDING,
                        rel_path=sa.bindparam("p_rel_path"),
                        pending_at=t,
                        flow_run_id=flow_run_id,
                        updated_at=t,
                    ),
                    old,
                )

    def release_pending(self, clinic_id: str, keys: list[str]) -> None:
        """Undo :meth:`mark_pending` for keys that will not be uploaded (bad input): a row
        that never had content goes; one that had keeps its last accepted content and
        state."""
        if not keys:
            return
        t = now()
        with self._begin() as conn:
            for chunk in _chunks(keys):
                mine = sa.and_(
                    images.c.clinic_id == clinic_id,
                    images.c.key.in_(chunk),
                    images.c.state == PENDING,
                )
                conn.execute(sa.delete(images).where(mine, images.c.sha256.is_(None)))
                conn.execute(
                    sa.update(images)
                    .where(mine)
                    .values(
                        state=sa.case(
                            (images.c.verified_at.is_not(None), VERIFIED), else_=UPLOADED
                        ),
                        updated_at=t,
                    )
                )

    def settle(self, clinic_id: str, records: list[Settled], flow_run_id: str | None) -> None:
        """Record what S3 accepted (*uploaded*) or confirmed (*verified*), in one transaction.

        A row whose previously accepted content had another checksum keeps that content in
        ``image_history``. Keys without a row (content found in S3 already) get one.
        """
        if not records:
            return
        self._series_ids(clinic_id, [r.info.header for r in records])
        t = now()
        with self._begin() as conn:
            old: dict[str, Any] = {}
            for chunk in _chunks([r.key for r in records]):
                for row in conn.execute(
                    sa.select(images).where(
                        images.c.clinic_id == clinic_id, images.c.key.in_(chunk)
                    )
                ):
                    old[row.key] = row
            history = []
            inserts = []
            updates = []
            for rec in records:
                info = rec.info
                values = {
                    "image_id": info.image_id,
                    "patient_guid": info.patient_guid,
                    "rel_path": info.rel_path,
                    "source_size": info.size,
                    "source_mtime_ns": info.mtime_ns,
                    "sha256": info.sha256,
                    "etag": rec.etag,
                    "series_id": self._series_of(clinic_id, info.header),
                    "sop_instance_uid": info.header.sop_instance_uid,
                    "modality": info.header.modality,
                    "acquisition_date": info.header.acquisition_date,
                    "state": rec.state,
                    "uploaded_at": rec.uploaded_at,
                    "verified_at": rec.verified_at,
                    "flow_run_id": flow_run_id,
                    "updated_at": t,
                }
                prev = old.get(rec.key)
                if prev is None:
                    inserts.append(
                        {"clinic_id": clinic_id, "key": rec.key, "pending_at": t, **values}
                    )
                    continue
                accepted = prev.verified_at is not None or prev.uploaded_at is not None
                if prev.sha256 is not None and prev.sha256 != info.sha256 and accepted:
                    history.append(
                        {
                            "image_row_id": prev.id,
                            "sha256": prev.sha256,
                            "source_size": prev.source_size,
                            "source_mtime_ns": prev.source_mtime_ns,
                            "etag": prev.etag,
                            "state": VERIFIED if prev.verified_at is not None else UPLOADED,
                            "verified_at": prev.verified_at,
                            "replaced_at": t,
                            "replaced_by_flow_run_id": flow_run_id,
                        }
                    )
                updates.append(
                    {"row_id": prev.id, **{f"v_{name}": values[name] for name in _SETTLED_COLUMNS}}
                )
            if history:
                conn.execute(sa.insert(image_history), history)
            if inserts:
                conn.execute(sa.insert(images), inserts)
            if updates:
                conn.execute(
                    sa.update(images)
                    .where(images.c.id == sa.bindparam("row_id"))
                    .values({name: sa.bindparam(f"v_{name}") for name in _SETTLED_COLUMNS}),
                    updates,
                )

    def record_check(
        self, clinic_id: str, confirmed: Sequence[str], drifted: Sequence[str] = ()
    ) -> None:
        """Record what a listing of S3 showed: ``confirmed`` keys hold the verified size and
        ETag (state back to *verified*, ``checked_at`` now); ``drifted`` keys do not (a
        *verified* row becomes *drifted*, and the next sync uploads it again)."""
        if not confirmed and not drifted:
            return
        t = now()
        with self._begin() as conn:
            for keys, state in ((confirmed, VERIFIED), (drifted, DRIFTED)):
                for chunk in _chunks(list(keys)):
                    conn.execute(
                        sa.update(images)
                        .where(
                            images.c.clinic_id == clinic_id,
                            images.c.key.in_(chunk),
                            images.c.state.in_((VERIFIED, DRIFTED)),  # never a pending row
                        )
                        .values(state=state, checked_at=t, updated_at=t)
                    )

    # -- reading -------------------------------------------------------------------------

    def lookup(self, clinic_id: str, keys: Iterable[str]) -> dict[str, CatalogRow]:
        """Rows of ``keys`` (any state), by key."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CatalogRow] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                for r in conn.execute(
                    sa.select(*_ROW_COLUMNS).where(
                        images.c.clinic_id == clinic_id, images.c.key.in_(chunk)
                    )
                ):
                    found[r.key] = _row(r)
        return found

    def rows(self, clinic_id: str) -> list[CatalogRow]:
        """Every image row of a clinic, ordered by key."""
        with self.engine.connect() as conn:
            return [
                _row(r)
                for r in conn.execute(
                    sa.select(*_ROW_COLUMNS)
                    .where(images.c.clinic_id == clinic_id)
                    .order_by(images.c.key)
                )
            ]

    def history(self, clinic_id: str, key: str) -> list[dict[str, Any]]:
        """Earlier contents of one key, oldest first."""
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(image_history)
                .join(images, image_history.c.image_row_id == images.c.id)
                .where(images.c.clinic_id == clinic_id, images.c.key == key)
                .order_by(image_history.c.id)
            )
            return [dict(r._mapping) for r in result]

    def state_counts(self, clinic_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(images.c.state, sa.func.count())
                .where(images.c.clinic_id == clinic_id)
                .group_by(images.c.state)
            )
            return {state: int(n) for state, n in result}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; NORMAL sync is durable across process crashes
    # (a power loss may lose the last transactions, which the next run redoes).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def default_catalog_url(state_dir: str | Path) -> str:
    """``sqlite:///{state_dir}/catalog.sqlite``."""
    return f"sqlite:///{Path(state_dir) / 'catalog.sqlite'}"
