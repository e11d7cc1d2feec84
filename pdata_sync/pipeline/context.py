"""The run context: everything a run of one clinic uses, built from its config in one place.

Clients, the catalog, the Sidexis engine and the secrets they need are made here and only
here, once per process for the same settings (a boto3 client loads botocore's models, about
0.1 s of CPU; a run's database steps share one pooled SQL Server login; the catalog is
checked and migrated once). Every step of a run receives the context instead of looking
these up again.

Secrets come from a :class:`Secrets` the caller hands in: the flows pass one that reads
Prefect blocks (pdata_sync.tasks.credentials), everything else the environment only, so the
core never imports Prefect. Likewise the logger: the flows hand in Prefect's run logger,
asked at each line so that it is the task run's own; elsewhere lines go to ``pdata_sync``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from pdata_sync.archive.s3_client import AwsKeys, make_client
from pdata_sync.base.config import (
    CatalogConfig,
    ClinicConfig,
    DatabaseConfig,
    OrthancConfig,
    S3Config,
    TransferConfig,
)
from pdata_sync.base.cpu import CpuSlots
from pdata_sync.base.errors import ConfigError
from pdata_sync.catalog import (
    Catalog,
    ClinicImages,
    OrthancRecords,
    SyncMarks,
    default_catalog_url,
    destination_of,
)
from pdata_sync.identity.keys import parse_key
from pdata_sync.orthanc.client import OrthancClient
from pdata_sync.source.sidexis_db import make_engine

STATE_DIR_ENV = "PDATA_SYNC_STATE_DIR"
DB_PASSWORD_ENV = "PDATA_SYNC_DB_PASSWORD"
CATALOG_PASSWORD_ENV = "PDATA_SYNC_CATALOG_PASSWORD"
ORTHANC_PASSWORD_ENV = "PDATA_SYNC_ORTHANC_PASSWORD"


class Secrets(Protocol):
    """Where a run's secrets come from: a named block, else an environment variable."""

    def value(self, block_name: str | None, setting: str, env: str) -> str | None: ...

    def aws_keys(self, s3: S3Config) -> AwsKeys | None: ...


class EnvironmentSecrets:
    """Secrets from the environment only; a config naming a Prefect block is refused here
    (blocks are read where Prefect runs: the flows and the CLI)."""

    def value(self, block_name: str | None, setting: str, env: str) -> str | None:
        if block_name:
            raise ConfigError(f"{setting}: Prefect blocks are read by the flows, not here")
        return os.environ.get(env) or None

    def aws_keys(self, s3: S3Config) -> AwsKeys | None:
        if s3.aws_credentials_block:
            raise ConfigError("s3.aws_credentials_block: Prefect blocks are read by the flows")
        return None  # boto3's standard chain


ENVIRONMENT = EnvironmentSecrets()


def state_dir(config: ClinicConfig) -> Path:
    """Where this worker keeps state between runs (the catalog, the resolver cache)."""
    if config.transfer.state_dir:
        return Path(config.transfer.state_dir)
    return default_state_dir()


def default_state_dir() -> Path:
    """The worker's state folder when a config names none: PDATA_SYNC_STATE_DIR, else
    ~/.local/state/pdata-sync."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    return Path.home() / ".local" / "state" / "pdata-sync"


def catalog_url(config: ClinicConfig) -> str:
    """The configured catalog URL, or the SQLite file in the worker's state folder."""
    return config.catalog.url or default_catalog_url(state_dir(config))


def module_logger() -> Any:
    """Where a run's lines go outside Prefect: the ``pdata_sync`` logger."""
    return logging.getLogger("pdata_sync")


# One of each per process and settings, shared by every run and thread of the process.
_LOCK = threading.Lock()
_CATALOGS: dict[str, Catalog] = {}
_ENGINES: dict[tuple[str, str | None], Engine] = {}


@functools.lru_cache(maxsize=16)
def _s3_client(
    s3: S3Config, transfer: TransferConfig, keys: AwsKeys | None, timezone: str | None
) -> Any:
    return make_client(s3, transfer, keys, bandwidth=transfer.uploads(timezone))


@functools.lru_cache(maxsize=16)
def _orthanc_client(cfg: OrthancConfig, password: str | None) -> OrthancClient:
    return OrthancClient(cfg, password)


def open_catalog(url: str, password: str | None, new: bool = False) -> Catalog:
    """The process's catalog at ``url`` (checked and migrated once). ``new``: set an
    existing SQLite catalog aside and start a new one (sync --new-catalog)."""
    with _LOCK:
        if new and url in _CATALOGS:
            _CATALOGS.pop(url).close()
        if url not in _CATALOGS:
            _CATALOGS[url] = Catalog.open(url, password, new=new)
        return _CATALOGS[url]


def s3_client(
    s3: S3Config, transfer: TransferConfig | None, secrets: Secrets, timezone: str | None = None
) -> Any:
    """The process's S3 client for these settings and credentials (thread-safe); its
    uploads keep to the transfer settings' bandwidth in ``timezone`` (the clinic's)."""
    return _s3_client(s3, transfer or TransferConfig(), secrets.aws_keys(s3), timezone)


def orthanc_client(cfg: OrthancConfig, secrets: Secrets) -> OrthancClient:
    """The process's Orthanc client for these settings and password (thread-safe pool)."""
    password = secrets.value(
        cfg.password_secret_block, "orthanc.password_secret_block", ORTHANC_PASSWORD_ENV
    )
    return _orthanc_client(cfg, password)


def database_engine(cfg: DatabaseConfig, secrets: Secrets) -> Engine:
    """One engine per Sidexis database per process: a run's database steps share its pooled
    connection (one SQL Server login, not three; stale connections are pinged)."""
    password = secrets.value(
        cfg.password_secret_block, "database.password_secret_block", DB_PASSWORD_ENV
    )
    key = (cfg.url, password)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = make_engine(cfg, password)
        return _ENGINES[key]


def catalog_password(cfg: CatalogConfig, secrets: Secrets) -> str | None:
    return secrets.value(
        cfg.password_secret_block, "catalog.password_secret_block", CATALOG_PASSWORD_ENV
    )


class RunContext:
    """One run of one clinic: its config, the run's id and what it talks to.

    Its S3 client, Sidexis engine and Orthanc client are looked up once per run (and their
    secrets read once: a Prefect block is an API call), then kept; :meth:`with_config` gives
    a context for other settings that looks them up again.

    A plain object on purpose: Prefect walks dataclasses and pydantic models it is handed
    as task arguments (for futures); it leaves this one alone."""

    def __init__(
        self,
        config: ClinicConfig,
        run_id: str | None = None,
        secrets: Secrets = ENVIRONMENT,
        catalog: Catalog | None = None,
        logger: Callable[[], Any] = module_logger,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.secrets = secrets
        self._catalog = catalog
        self._logger = logger
        self._made: dict[str, Any] = {}  # what this run looked up, by name
        self.deadline: datetime | None = None  # past it, no upload starts (transfer.stop_at)
        self._lock = threading.Lock()

    def with_config(self, config: ClinicConfig) -> RunContext:
        """The same run (id, secrets, catalog, logger) with other settings."""
        ctx = RunContext(config, self.run_id, self.secrets, self._catalog, self._logger)
        ctx.deadline = self.deadline
        return ctx

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()``'s answer, asked once per run (threads share it)."""
        with self._lock:
            if name not in self._made:
                self._made[name] = make()
            return self._made[name]

    @property
    def clinic_id(self) -> str:
        return self.config.clinic_id

    @property
    def log(self) -> Any:
        return self._logger()

    @property
    def destination(self) -> str:
        """The catalog's name for the configured bucket (endpoint + bucket)."""
        return destination_of(self.config.s3.endpoint_url, self.config.s3.bucket)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.config)

    def open_catalog(self, new: bool = False) -> Catalog:
        """The clinic's catalog; ``new``: start a new one (a damaged catalog set aside)."""
        if self._catalog is None or new:
            password = catalog_password(self.config.catalog, self.secrets)
            self._catalog = open_catalog(catalog_url(self.config), password, new=new)
        return self._catalog

    @property
    def catalog(self) -> Catalog:
        return self.open_catalog()

    def images(self) -> ClinicImages:
        """The clinic's rows in the configured destination."""
        return self.catalog.images(self.clinic_id, self.destination)

    def marks(self) -> SyncMarks:
        """What incremental runs recorded per patient, in the configured destination."""
        return self.catalog.marks(self.clinic_id, self.destination)

    def orthanc_records(self) -> OrthancRecords:
        assert self.config.orthanc is not None
        return self.catalog.orthanc(self.clinic_id, self.config.orthanc.url)

    @property
    def s3(self) -> Any:
        return self._once(
            "s3",
            lambda: s3_client(
                self.config.s3, self.config.transfer, self.secrets, self.config.timezone
            ),
        )

    @property
    def cpu(self) -> CpuSlots:
        """The run's slots for CPU work (``transfer.cpu_threads``), shared by its batches."""
        return self._once("cpu", lambda: CpuSlots(self.config.transfer.cpu_slots()))

    @property
    def engine(self) -> Engine:
        return self._once("engine", lambda: database_engine(self.config.database, self.secrets))

    @property
    def orthanc(self) -> OrthancClient | None:
        orthanc = self.config.orthanc
        if orthanc is None:
            return None
        return self._once("orthanc", lambda: orthanc_client(orthanc, self.secrets))

    def belongs(self, key: str) -> bool:
        """Is this a key this clinic's syncs write?"""
        fields = parse_key(key, self.config.s3.key_template)
        return fields is not None and fields.get("clinic_id", self.clinic_id) == self.clinic_id
