"""Secrets from Prefect blocks, else the environment: what the flows and the CLI hand to a
run's context (pdata_sync.pipeline.context), and the commands that store them. Never from
the config file; never logged."""

from __future__ import annotations

from typing import Any

from pdata_sync.archive.s3_client import AwsKeys
from pdata_sync.base.config import OrthancConfig, S3Config, TransferConfig
from pdata_sync.base.errors import ConfigError
from pdata_sync.orthanc.client import OrthancClient
from pdata_sync.pipeline import context
from pdata_sync.pipeline.context import RunContext


class PrefectSecrets(context.EnvironmentSecrets):
    """A named Prefect block when the config names one, else the environment."""

    def value(self, block_name: str | None, setting: str, env: str) -> str | None:
        if not block_name:
            return super().value(None, setting, env)
        from prefect.blocks.system import Secret

        try:
            secret = Secret.load(block_name)
        except ValueError:
            raise ConfigError(f"{setting}: no Prefect Secret block named {block_name!r}") from None
        return str(secret.get())

    def aws_keys(self, s3: S3Config) -> AwsKeys | None:
        """Keys from the named AwsCredentials block; None means boto3's standard chain."""
        if not s3.aws_credentials_block:
            return None
        from prefect_aws import AwsCredentials

        try:
            block = AwsCredentials.load(s3.aws_credentials_block)
        except ValueError:
            raise ConfigError(
                f"s3.aws_credentials_block: no Prefect AwsCredentials block named "
                f"{s3.aws_credentials_block!r}"
            ) from None
        secret = block.aws_secret_access_key
        if not block.aws_access_key_id or secret is None:
            raise ConfigError(
                f"s3.aws_credentials_block {s3.aws_credentials_block!r} has no access key pair"
            )
        return AwsKeys(
            access_key_id=block.aws_access_key_id,
            secret_access_key=secret.get_secret_value(),
            session_token=block.aws_session_token,
        )


PREFECT_SECRETS = PrefectSecrets()


def run_logger() -> Any:
    """The logger of the Prefect run (or task run) this thread is in, else ``pdata_sync``'s."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
        return get_run_logger()
    return context.module_logger()


def run_context(config: Any, run_id: str | None = None) -> RunContext:
    """A run's context: secrets from Prefect blocks or the environment, lines to the run's
    log."""
    return RunContext(config, run_id, PREFECT_SECRETS, logger=run_logger)


def orthanc_client(cfg: OrthancConfig) -> OrthancClient:
    """The process's Orthanc client for these settings (pdata_sync.pipeline.context)."""
    return context.orthanc_client(cfg, PREFECT_SECRETS)


def s3_client(
    s3: S3Config, transfer: TransferConfig | None = None, timezone: str | None = None
) -> Any:
    """The process's S3 client for these settings (pdata_sync.pipeline.context); its
    uploads keep to ``transfer``'s bandwidth in ``timezone``."""
    return context.s3_client(s3, transfer, PREFECT_SECRETS, timezone)


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
