"""Opening a catalog database: connection, SQLite settings, migrations, write transactions."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from pdata_sync.base.errors import ConfigError
from pdata_sync.catalog.schema import HEAD_REVISION, MIGRATIONS, VERSION_TABLE, metadata

_PG_MIGRATION_LOCK = 0x70646174  # "pdat": the advisory lock key of catalog migrations


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


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


def _is_new(conn: sa.Connection) -> bool:
    """No table of the catalog exists yet (nor Alembic's version table)."""
    existing = set(sa.inspect(conn).get_table_names())
    return not existing & {*metadata.tables, VERSION_TABLE}


def _create_at_head(conn: sa.Connection) -> None:
    """Create a new catalog in one step from the declared schema, at the newest revision.

    The same tables the migrations build (tests/integration/test_catalog.py compares the
    two, CHECK constraints included), without replaying seven migrations, SQLite's table
    copies among them: 0.02 s instead of 0.2 s, on every clinic's first run. Alembic's
    version table is written as Alembic writes it, so later migrations start from here.
    """
    metadata.create_all(conn)
    version = sa.Table(
        VERSION_TABLE,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )
    version.create(conn)
    conn.execute(version.insert().values(version_num=HEAD_REVISION))


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite catalog URL; None for any other database."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite" or not sa_url.database:
        return None
    return Path(sa_url.database)


def set_aside(path: Path, at: str) -> Path:
    """Move an SQLite catalog (and its -wal and -shm files) out of the way, keeping it:
    ``catalog.sqlite`` becomes ``catalog.sqlite.set-aside-{at}``. Returns the new path."""
    target = path.with_name(f"{path.name}.set-aside-{at}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists() or part.is_symlink():
            part.rename(Path(f"{target}{suffix}"))
    return target


def check_sqlite_file(path: Path) -> None:
    """Refuse a catalog file that exists but is empty (cut to zero bytes): opening it would
    create a new catalog silently, trusting nothing and remembering nothing."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        raise ConfigError(
            f"catalog {path} is empty (0 bytes): restore it from a backup, or start over "
            "with a new catalog (sync --new-catalog, which keeps this file beside it)"
        )


def _damaged(path: str, what: str) -> ConfigError:
    return ConfigError(
        f"catalog {path} is damaged ({what}): restore it from a backup, or start over with "
        "a new catalog (sync --new-catalog, which keeps this file beside it)"
    )


class Database:
    """One catalog database; thread-safe (one engine, a connection per call)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.is_sqlite = engine.url.get_backend_name() == "sqlite"
        # SQLite has one writer at a time; serialising our own threads avoids lock waits.
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @staticmethod
    def connect(url: str, password: str | None = None) -> Engine:
        """An engine for ``url``; raises :class:`ConfigError` naming the database when it
        cannot be reached."""
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
        try:
            with engine.connect():
                pass
        except DBAPIError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if sa_url.get_backend_name() == "sqlite" and "not a database" in reason:
                raise _damaged(str(sa_url.database), reason) from None
            raise ConfigError(f"catalog {_safe(sa_url)}: cannot connect: {reason[:300]}") from None
        return engine

    def check_integrity(self, thorough: bool = False) -> None:
        """An SQLite catalog's own check of its file: ``PRAGMA quick_check`` (0.2 s for
        100,000 rows), or ``integrity_check`` (``thorough``: indexes against tables too,
        0.4 s; what ``verify`` runs). Raises :class:`ConfigError` on the first problem.
        PostgreSQL keeps its own data safe: nothing to do."""
        if not self.is_sqlite:
            return
        pragma = "integrity_check" if thorough else "quick_check"
        try:
            with self.engine.connect() as conn:
                found = [str(r[0]) for r in conn.execute(sa.text(f"PRAGMA {pragma}(5)"))]
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise _damaged(str(self.engine.url.database), reason[:200]) from None
        if found != ["ok"]:
            raise _damaged(str(self.engine.url.database), f"{pragma}: {'; '.join(found)[:300]}")

    def schema_revision(self) -> str | None:
        """The migration the database is at; None for a new (empty) catalog."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    def migrate(self, create: bool = True) -> None:
        """Create (a new catalog) or upgrade the schema to the newest Alembic revision.
        ``create`` False: a database without the catalog's tables is refused instead (an
        SQLite file that existed: a catalog whose tables are gone is not a new one)."""
        if self.schema_revision() == HEAD_REVISION:
            return
        lock = self._write_lock or threading.Lock()
        # Two processes opening a new catalog at once must not both create it: one waits
        # for the other (a file lock beside an SQLite file, an advisory lock on PostgreSQL),
        # then finds the schema at head and does nothing.
        with lock, self._migration_lock(), self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            if _is_new(conn):
                if not create:
                    raise _damaged(str(self.engine.url.database), "it has no catalog tables")
                _create_at_head(conn)
                return
            from alembic import command
            from alembic.config import Config

            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if not self.is_sqlite:
            yield
            return
        import fcntl

        path = Path(f"{self.engine.url.database}.migrate-lock")
        with open(path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def checkpoint(self) -> None:
        """Copy an SQLite catalog's write-ahead log into its file, so the file alone holds
        the whole catalog: a run's writes otherwise stay in ``catalog.sqlite-wal`` until a
        thousand pages pile up, and a backup of ``catalog.sqlite`` alone would miss them.
        PASSIVE: never waits for another clinic's run reading the same file (what it reads
        is copied by a later checkpoint). Nothing to do on PostgreSQL."""
        if not self.is_sqlite:
            return
        with self.engine.connect() as conn:
            conn.execute(sa.text("PRAGMA wal_checkpoint(PASSIVE)"))

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A write transaction (serialised among this process's threads on SQLite)."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._write_lock, self.engine.begin() as conn:
                yield conn

    def insert_ignore(self, table: sa.Table, index: list[str]) -> Any:
        """``INSERT ... ON CONFLICT DO NOTHING`` in this database's dialect."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table).on_conflict_do_nothing(index_elements=index)
