"""The image catalog: every object pdata-sync put in S3, its source and its proof.

One row per object (clinic id + key), grouped into series and studies by the DICOM UIDs.
An image row moves ``pending -> uploaded -> verified``: *pending* is written before the
upload starts, *uploaded* when S3 accepted the body (its checksum checked by S3), *verified*
only after S3 reported back the size and checksum of what it stores and they matched the
local file (docs/adr/0004-catalog-and-acknowledged-uploads.md). A source that changes keeps
its history: the previous checksum, size and times go to ``image_history``.

SQLite (default, one file per worker) or PostgreSQL; the schema is created and upgraded by
Alembic migrations (``pdata_sync/catalog_migrations``) when the catalog is opened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from .dicom_meta import UNKNOWN, DicomHeader
from .errors import ConfigError

PENDING = "pending"
UPLOADED = "uploaded"
VERIFIED = "verified"
STATES = (PENDING, UPLOADED, VERIFIED)

VERSION_TABLE = "pdata_sync_catalog_version"
MIGRATIONS = Path(__file__).parent / "catalog_migrations"
_LOOKUP_CHUNK = 500

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
    sa.Column("source_size", sa.BigInteger, nullable=False),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("etag", sa.String(80), nullable=True),
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), nullable=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("modality", sa.String(16), nullable=False),
    sa.Column("acquisition_date", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("pending_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("clinic_id", "key", name="uq_images_clinic_key"),
    sa.CheckConstraint("state IN ('pending', 'uploaded', 'verified')", name="ck_images_state"),
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
class CatalogRow:
    """One image row as the uploader and ``verify`` need it."""

    key: str
    rel_path: str
    patient_guid: str
    size: int
    mtime_ns: int
    sha256: str
    etag: str | None
    state: str


def now() -> datetime:
    return datetime.now(UTC)


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _row(r: Any) -> CatalogRow:
    return CatalogRow(
        key=r.key,
        rel_path=r.rel_path,
        patient_guid=r.patient_guid,
        size=int(r.source_size),
        mtime_ns=int(r.source_mtime_ns),
        sha256=r.sha256,
        etag=r.etag,
        state=r.state,
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
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
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
            kwargs["pool_size"] = 20
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

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
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

    def _series_id(self, clinic_id: str, header: DicomHeader) -> int | None:
        """The series row of ``header`` (created with its study if new); None if unknown."""
        if UNKNOWN in (header.study_instance_uid, header.series_instance_uid):
            return None
        cache_key = (clinic_id, header.study_instance_uid, header.series_instance_uid)
        if cache_key in self._series_cache:
            return self._series_cache[cache_key]
        found_id = self._find_or_create_series(clinic_id, header)
        self._series_cache[cache_key] = found_id
        return found_id

    def _find_or_create_series(self, clinic_id: str, header: DicomHeader) -> int:
        for _ in range(3):
            with self.engine.connect() as conn:
                found = conn.execute(
                    sa.select(series.c.id)
                    .join(studies, series.c.study_id == studies.c.id)
                    .where(
                        studies.c.clinic_id == clinic_id,
                        studies.c.study_instance_uid == header.study_instance_uid,
                        series.c.series_instance_uid == header.series_instance_uid,
                    )
                ).scalar()
            if found is not None:
                return int(found)
            try:
                with self._begin() as conn:
                    study_id = conn.execute(
                        sa.select(studies.c.id).where(
                            studies.c.clinic_id == clinic_id,
                            studies.c.study_instance_uid == header.study_instance_uid,
                        )
                    ).scalar()
                    if study_id is None:
                        study_id = conn.execute(
                            sa.insert(studies).values(
                                clinic_id=clinic_id,
                                study_instance_uid=header.study_instance_uid,
                                created_at=now(),
                            )
                        ).inserted_primary_key[0]
                    return int(
                        conn.execute(
                            sa.insert(series).values(
                                study_id=study_id,
                                series_instance_uid=header.series_instance_uid,
                                modality=header.modality,
                                created_at=now(),
                            )
                        ).inserted_primary_key[0]
                    )
            except IntegrityError:
                continue  # another thread or worker created it first: read it
        raise RuntimeError("catalog: could not record the series")

    def mark_pending(
        self, clinic_id: str, key: str, info: SourceInfo, flow_run_id: str | None
    ) -> None:
        """Record that ``key`` is about to be uploaded from ``info`` (before any byte goes).

        If the row held other content that S3 had accepted, that content moves to the
        history first.
        """
        self._record(clinic_id, key, info, flow_run_id, PENDING, None)

    def _record(
        self,
        clinic_id: str,
        key: str,
        info: SourceInfo,
        flow_run_id: str | None,
        state: str,
        etag: str | None,
    ) -> None:
        series_id = self._series_id(clinic_id, info.header)
        t = now()
        values = {
            "image_id": info.image_id,
            "patient_guid": info.patient_guid,
            "rel_path": info.rel_path,
            "source_size": info.size,
            "source_mtime_ns": info.mtime_ns,
            "sha256": info.sha256,
            "etag": etag,
            "series_id": series_id,
            "sop_instance_uid": info.header.sop_instance_uid,
            "modality": info.header.modality,
            "acquisition_date": info.header.acquisition_date,
            "state": state,
            "pending_at": t,
            "uploaded_at": None,
            "verified_at": t if state == VERIFIED else None,
            "flow_run_id": flow_run_id,
            "updated_at": t,
        }
        with self._begin() as conn:
            old = conn.execute(
                sa.select(images).where(images.c.clinic_id == clinic_id, images.c.key == key)
            ).first()
            if old is None:
                conn.execute(sa.insert(images).values(clinic_id=clinic_id, key=key, **values))
                return
            if old.sha256 != info.sha256 and old.state in (UPLOADED, VERIFIED):
                conn.execute(
                    sa.insert(image_history).values(
                        image_row_id=old.id,
                        sha256=old.sha256,
                        source_size=old.source_size,
                        source_mtime_ns=old.source_mtime_ns,
                        etag=old.etag,
                        state=old.state,
                        verified_at=old.verified_at,
                        replaced_at=t,
                        replaced_by_flow_run_id=flow_run_id,
                    )
                )
            conn.execute(sa.update(images).where(images.c.id == old.id).values(**values))

    def _set_state(
        self,
        clinic_id: str,
        key: str,
        sha256: str,
        state: str,
        etag: str,
        flow_run_id: str | None,
        uploaded_at: datetime | None = None,
    ) -> None:
        t = now()
        values: dict[str, Any] = {
            "state": state,
            "etag": etag,
            "flow_run_id": flow_run_id,
            "updated_at": t,
            f"{state}_at": t,
        }
        if uploaded_at is not None:
            values["uploaded_at"] = uploaded_at
        with self._begin() as conn:
            result = conn.execute(
                sa.update(images)
                .where(
                    images.c.clinic_id == clinic_id,
                    images.c.key == key,
                    images.c.sha256 == sha256,  # only the content this call is about
                )
                .values(**values)
            )
            if result.rowcount != 1:
                raise RuntimeError(f"catalog: no pending row for {key} with this content")

    def mark_uploaded(
        self, clinic_id: str, key: str, sha256: str, etag: str, flow_run_id: str | None
    ) -> None:
        """S3 accepted the body (it checked our SHA-256 and MD5 on receipt)."""
        self._set_state(clinic_id, key, sha256, UPLOADED, etag, flow_run_id)

    def mark_verified(
        self,
        clinic_id: str,
        key: str,
        sha256: str,
        etag: str,
        flow_run_id: str | None,
        uploaded_at: datetime | None = None,
    ) -> None:
        """S3 reported a size and checksum matching the local file.

        ``uploaded_at``: when S3 accepted the body, if it was not recorded separately (the
        uploader writes *uploaded* on its own only when the confirmation fails, saving a
        write per image; a crash in between leaves the row *pending*, which the next run
        settles by comparing contents)."""
        self._set_state(clinic_id, key, sha256, VERIFIED, etag, flow_run_id, uploaded_at)

    def record_verified(
        self, clinic_id: str, key: str, info: SourceInfo, etag: str, flow_run_id: str | None
    ) -> None:
        """An object found in S3 already matching the file (e.g. a new worker, no catalog):
        recorded verified in one write."""
        self._record(clinic_id, key, info, flow_run_id, VERIFIED, etag)

    # -- reading -------------------------------------------------------------------------

    def lookup(self, clinic_id: str, keys: Iterable[str]) -> dict[str, CatalogRow]:
        """Rows of ``keys`` (any state), by key."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CatalogRow] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                for r in conn.execute(
                    sa.select(images).where(
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
                    sa.select(images).where(images.c.clinic_id == clinic_id).order_by(images.c.key)
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
