"""Secrets for a run: database, catalog and Orthanc passwords, AWS keys, the research key,
from Prefect blocks or the environment. Never from the config file; never logged."""

from __future__ import annotations

import functools
import os
from typing import Any

from pdata_sync.archive.s3_store import AwsKeys, make_client
from pdata_sync.base.config import (
    CatalogConfig,
    DatabaseConfig,
    OrthancConfig,
    ResearchConfig,
    S3Config,
    TransferConfig,
)
from pdata_sync.base.errors import ConfigError
from pdata_sync.orthanc.client import OrthancClient, insecure

DB_PASSWORD_ENV = "PDATA_SYNC_DB_PASSWORD"
CATALOG_PASSWORD_ENV = "PDATA_SYNC_CATALOG_PASSWORD"
ORTHANC_PASSWORD_ENV = "PDATA_SYNC_ORTHANC_PASSWORD"
RESEARCH_SECRET_ENV = "PDATA_SYNC_RESEARCH_SECRET"


def _secret(block_name: str | None, field: str, env: str) -> str | None:
    if block_name:
        from prefect.blocks.system import Secret

        try:
            secret = Secret.load(block_name)
        except ValueError:
            raise ConfigError(f"{field}: no Prefect Secret block named {block_name!r}") from None
        return str(secret.get())
    return os.environ.get(env) or None


def database_password(cfg: DatabaseConfig) -> str | None:
    """The password from the named Secret block, else ``PDATA_SYNC_DB_PASSWORD``, else None."""
    return _secret(cfg.password_secret_block, "database.password_secret_block", DB_PASSWORD_ENV)


def catalog_password(cfg: CatalogConfig) -> str | None:
    """The catalog database's password: Secret block, else ``PDATA_SYNC_CATALOG_PASSWORD``."""
    return _secret(cfg.password_secret_block, "catalog.password_secret_block", CATALOG_PASSWORD_ENV)


def orthanc_password(cfg: OrthancConfig) -> str | None:
    """Orthanc's password: Secret block, else ``PDATA_SYNC_ORTHANC_PASSWORD``."""
    return _secret(cfg.password_secret_block, "orthanc.password_secret_block", ORTHANC_PASSWORD_ENV)


def research_secret(cfg: ResearchConfig) -> str | None:
    """The key material of a research project's pseudonyms: Secret block, else
    ``PDATA_SYNC_RESEARCH_SECRET``."""
    return _secret(cfg.secret_block, "research.secret_block", RESEARCH_SECRET_ENV)


@functools.lru_cache(maxsize=16)
def _cached_orthanc(cfg: OrthancConfig, password: str | None) -> OrthancClient:
    return OrthancClient(cfg, password)


def warn_if_insecure(cfg: OrthancConfig | None, logger: Any) -> None:
    """At the start of a run that uses Orthanc: say what its settings expose."""
    for warning in insecure(cfg) if cfg is not None else []:
        logger.warning("%s", warning)


def orthanc_client(cfg: OrthancConfig) -> OrthancClient:
    """The process's Orthanc client for these settings and password (thread-safe pool)."""
    return _cached_orthanc(cfg, orthanc_password(cfg))


def aws_keys(cfg: S3Config) -> AwsKeys | None:
    """Keys from the named AwsCredentials block; None means boto3's standard chain."""
    if not cfg.aws_credentials_block:
        return None
    from prefect_aws import AwsCredentials

    try:
        block = AwsCredentials.load(cfg.aws_credentials_block)
    except ValueError:
        raise ConfigError(
            f"s3.aws_credentials_block: no Prefect AwsCredentials block named "
            f"{cfg.aws_credentials_block!r}"
        ) from None
    secret = block.aws_secret_access_key
    if not block.aws_access_key_id or secret is None:
        raise ConfigError(
            f"s3.aws_credentials_block {cfg.aws_credentials_block!r} has no access key pair"
        )
    return AwsKeys(
        access_key_id=block.aws_access_key_id,
        secret_access_key=secret.get_secret_value(),
        session_token=block.aws_session_token,
    )


def save_aws_block(
    name: str, access_key_id: str, secret_access_key: str, region: str | None = None
) -> None:
    """Store AWS keys in a Prefect AwsCredentials block (overwriting one of that name)."""
    from prefect_aws import AwsCredentials

    AwsCredentials(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region,
    ).save(name, overwrite=True)


def save_secret_block(name: str, value: str) -> None:
    """Store a value in a Prefect Secret block (overwriting one of that name)."""
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


@functools.lru_cache(maxsize=16)
def _cached_client(s3: S3Config, transfer: TransferConfig, keys: AwsKeys | None) -> Any:
    return make_client(s3, transfer, keys)


def s3_client(s3: S3Config, transfer: TransferConfig | None = None) -> Any:
    """The process's S3 client for these settings and credentials (boto3 clients are
    thread-safe; building one loads botocore's models, about 0.1 s of CPU)."""
    return _cached_client(s3, transfer or TransferConfig(), aws_keys(s3))
