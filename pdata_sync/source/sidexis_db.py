"""Read-only access to the Sidexis database: patient CardIds and media (image) names.

Queries are parameterised, select only the needed columns and keep under SQL Server's limit
of 2,100 parameters per statement. SQLite databases are opened read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from pdata_sync.base.config import DatabaseConfig
from pdata_sync.base.errors import ConfigError

# SQL Server accepts 2,100 parameters per statement; leave room for the driver's own.
MAX_PARAMS = 2000

SKIP_PATIENT_NOT_IN_DB = "patients_not_in_database"
SKIP_PATIENT_DELETED = "patients_deleted"
SKIP_PATIENT_NO_CARD_ID = "patients_without_card_id"


@dataclass
class PatientLookup:
    """CardIds per Sidexis patient id, and the patients skipped with their reason."""

    card_ids: dict[int, list[str]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)

    def images_without_patient_row(self, images: Iterable[Any]) -> list[int]:
        """The image ids of ``images`` (anything with ``patient_id`` and ``image_id``) whose
        patient the patient table does not hold."""
        return [
            i.image_id for i in images if self.skipped.get(i.patient_id) == SKIP_PATIENT_NOT_IN_DB
        ]


@dataclass(frozen=True)
class MediaRow:
    name: str | None
    deleted: bool
    patient_id: int | None = None  # the patient the row says the image belongs to


def _chunks(values: list[int], size: int = MAX_PARAMS) -> Iterator[list[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _safe_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def make_engine(cfg: DatabaseConfig, password: str | None = None) -> Engine:
    """An engine for the Sidexis database; SQLite files are opened read-only."""
    url = make_url(cfg.url)
    if password:
        url = url.set(password=password)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if not path or path == ":memory:":
            raise ConfigError("database.url: an SQLite URL must name a database file")
        url = URL.create("sqlite", database=f"file:{path}?mode=ro", query={"uri": "true"})
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError) as exc:
        raise ConfigError(f"database.url {_safe_url(url)}: {exc}") from None


def _truthy(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y"}
    return bool(value)


def clean_card_id(value: object) -> str | None:
    """A CardId as a trimmed string (leading zeros kept), or None if NULL, empty or blank."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _patient_table(cfg: DatabaseConfig) -> tuple[sa.TableClause, list[sa.ColumnClause]]:
    cols = [sa.column(cfg.patient_id_column), sa.column(cfg.card_id_column)]
    if cfg.patient_deleted_column:
        cols.append(sa.column(cfg.patient_deleted_column))
    return sa.table(cfg.patient_table, *cols, schema=cfg.db_schema), cols


def _media_table(cfg: DatabaseConfig) -> tuple[sa.TableClause, list[sa.ColumnClause]]:
    """The media table and its columns: id, name, then the optional deleted flag and
    patient id (each labelled, so rows are read by role whatever is configured)."""
    cols = [sa.column(cfg.media_id_column), sa.column(cfg.media_name_column)]
    if cfg.media_deleted_column:
        cols.append(sa.column(cfg.media_deleted_column))
    if cfg.media_patient_column:
        cols.append(sa.column(cfg.media_patient_column))
    return sa.table(cfg.media_table, *cols, schema=cfg.db_schema), cols


def qualified(cfg: DatabaseConfig, table: str) -> str:
    """``schema.table`` as an operator reads it (``table`` without a schema)."""
    return f"{cfg.db_schema}.{table}" if cfg.db_schema else table


def check_database(engine: Engine, cfg: DatabaseConfig) -> None:
    """Connect and probe both tables and all configured columns; raise :class:`ConfigError`."""
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigError(
            f"database {_safe_url(engine.url)}: cannot connect: {reason[:300]}"
        ) from None
    with conn:
        for builder, name in ((_patient_table, cfg.patient_table), (_media_table, cfg.media_table)):
            table, cols = builder(cfg)
            try:
                conn.execute(sa.select(*cols).select_from(table).where(sa.false())).fetchall()
            except DBAPIError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                names = ", ".join(c.name for c in cols)
                raise ConfigError(
                    f"database: table {qualified(cfg, name)} or one of its columns ({names}) "
                    f"cannot be read: {reason[:300]}"
                ) from None


def fetch_patients(
    engine: Engine, cfg: DatabaseConfig, patient_ids: Iterable[int]
) -> PatientLookup:
    """All rows of the patient table for ``patient_ids``, reduced to usable CardIds.

    Rows marked deleted and rows with a NULL/empty/blank CardId are ignored. A patient with no
    usable row is skipped with the most telling reason: not in the database, deleted, or
    without CardId.
    """
    ids = sorted(set(patient_ids))
    table, cols = _patient_table(cfg)
    rows_seen: set[int] = set()
    deleted_only: dict[int, bool] = {}
    card_ids: dict[int, dict[str, None]] = {}
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            stmt = sa.select(*cols).select_from(table).where(cols[0].in_(chunk))
            for row in conn.execute(stmt):
                pid = int(row[0])
                rows_seen.add(pid)
                deleted = _truthy(row[2]) if len(row) > 2 else False
                deleted_only[pid] = deleted_only.get(pid, True) and deleted
                if deleted:
                    continue
                card = clean_card_id(row[1])
                if card is not None:
                    card_ids.setdefault(pid, {})[card] = None
    lookup = PatientLookup()
    for pid in ids:
        if pid in card_ids:
            lookup.card_ids[pid] = list(card_ids[pid])
        elif pid not in rows_seen:
            lookup.skipped[pid] = SKIP_PATIENT_NOT_IN_DB
        elif deleted_only.get(pid):
            lookup.skipped[pid] = SKIP_PATIENT_DELETED
        else:
            lookup.skipped[pid] = SKIP_PATIENT_NO_CARD_ID
    return lookup


def fetch_media(
    engine: Engine, cfg: DatabaseConfig, image_ids: Iterable[int]
) -> dict[int, MediaRow]:
    """Media rows for ``image_ids``: name, deleted flag and patient id. Missing ids are
    absent."""
    ids = sorted(set(image_ids))
    table, cols = _media_table(cfg)
    roles = _media_roles(cfg)
    result: dict[int, MediaRow] = {}
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            stmt = sa.select(*cols).select_from(table).where(cols[0].in_(chunk))
            result.update(_media_row(roles, row) for row in conn.execute(stmt))
    return result


def _media_roles(cfg: DatabaseConfig) -> list[str]:
    """The roles of :func:`_media_table`'s columns, in their order."""
    roles = ["id", "name"] + ["deleted"] * bool(cfg.media_deleted_column)
    return roles + ["patient"] * bool(cfg.media_patient_column)


def _media_row(roles: list[str], row: Sequence[Any]) -> tuple[int, MediaRow]:
    """(imageId, the row) of one media table row read with :func:`_media_table`."""
    values = dict(zip(roles, row, strict=True))
    patient = values.get("patient")
    return int(values["id"]), MediaRow(
        name=None if values["name"] is None else str(values["name"]),
        deleted=_truthy(values["deleted"]) if "deleted" in values else False,
        patient_id=None if patient is None else int(patient),
    )


def fetch_media_by_patient(
    engine: Engine, cfg: DatabaseConfig, patient_ids: Iterable[int]
) -> dict[int, list[tuple[int, str | None, bool]]]:
    """(imageId, name, deleted) of every media row naming one of ``patient_ids``, by
    patient: one read of the media table's id, name, deleted and patient columns (what an
    incremental run compares; docs/adr/0010). Needs ``media_patient_column``."""
    if not cfg.media_patient_column:
        raise ConfigError("database.media_patient_column is needed to match media rows")
    wanted = set(patient_ids)
    table, cols = _media_table(cfg)
    roles = _media_roles(cfg)
    # by position, not through _media_row: a clinic has 100,000 rows, read every night
    at_id, at_name, at_patient = roles.index("id"), roles.index("name"), roles.index("patient")
    at_deleted = roles.index("deleted") if "deleted" in roles else None
    result: dict[int, list[tuple[int, str | None, bool]]] = {}
    with engine.connect() as conn:
        for row in conn.execute(sa.select(*cols).select_from(table)):
            patient = row[at_patient]
            if patient is None or (patient_id := int(patient)) not in wanted:
                continue
            name = row[at_name]
            result.setdefault(patient_id, []).append(
                (
                    int(row[at_id]),
                    None if name is None else str(name),
                    False if at_deleted is None else _truthy(row[at_deleted]),
                )
            )
    return result
