"""S3's client, made once per settings and credentials, and the bucket check.

Every client is boto3 with botocore's ``standard`` retry mode (exponential backoff with
jitter on throttling, 5xx, timeouts and connection errors), SigV4 everywhere, no
``Expect: 100-continue``, timestamps parsed without dateutil; single PUTs and long listings
of the same client go through obstore (:mod:`pdata_sync.archive.s3_put`, ADR 0011).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.handlers import add_expect_header
from botocore.utils import parse_timestamp

from pdata_sync.archive import s3_put
from pdata_sync.archive.uploads import PARTS_IN_FLIGHT
from pdata_sync.base.bandwidth import Bandwidth, PacedBody, Throttle
from pdata_sync.base.config import S3Config, TransferConfig
from pdata_sync.base.errors import (
    ConfigError,
    ErrorKind,
    classify,
    describe,
    s3_code,
    s3_config_message,
)


@dataclass(frozen=True)
class AwsKeys:
    """Explicit AWS credentials (from a Prefect AwsCredentials block); repr hides them."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "AwsKeys(***)"


def parse_s3_timestamp(value: Any) -> datetime:
    """S3's timestamps as botocore parses them, ISO 8601 ones without dateutil.

    botocore parses every timestamp with dateutil (about 37 us each); a listing carries one
    per key, which made it most of a 100,000-key walk's CPU. ``datetime.fromisoformat``
    reads S3's ``2026-12-02T18:00:00.000Z`` in 0.1 us; anything it does not read to an
    aware datetime (HTTP dates, epoch seconds) goes to botocore's own parser."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    return parse_timestamp(value)


def make_client(
    cfg: S3Config,
    transfer: TransferConfig | None = None,
    keys: AwsKeys | None = None,
    *,
    max_pool_connections: int | None = None,
    bandwidth: Bandwidth | None = None,
) -> Any:
    """A boto3 S3 client for ``cfg``; thread-safe, meant to be shared by a batch's uploads.
    ``bandwidth``: the cap its uploads keep to (single PUTs, parts, pictures), one throttle
    for every thread that shares the client."""
    transfer = transfer or TransferConfig()
    pool = max_pool_connections or max(10, transfer.upload_concurrency * (PARTS_IN_FLIGHT + 1))
    config = Config(
        region_name=cfg.region,
        retries={"mode": "standard", "max_attempts": transfer.max_attempts},
        max_pool_connections=pool,
        connect_timeout=transfer.connect_timeout_seconds,
        read_timeout=transfer.read_timeout_seconds,
        # We send our own SHA-256 and MD5; no extra CRC32 trailer (not all servers take it).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if cfg.endpoint_url else "auto"},
        # SigV4 everywhere: presigned URLs otherwise fall back to SigV2 on custom endpoints
        # (no bounded X-Amz-Expires, refused by newer AWS regions).
        signature_version="s3v4",
        user_agent_extra="pdata-sync",
    )
    session_kwargs: dict[str, Any] = {}
    if keys is not None:
        session_kwargs = {
            "aws_access_key_id": keys.access_key_id,
            "aws_secret_access_key": keys.secret_access_key,
            "aws_session_token": keys.session_token,
        }
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_s3_timestamp
    )
    session = boto3.session.Session(botocore_session=core, **session_kwargs)
    throttle = Throttle(bandwidth) if bandwidth is not None and bandwidth.capped else None
    encryption = cfg.encryption()
    client = session.client("s3", endpoint_url=cfg.endpoint_url, config=config)
    s3_put.register(
        client,
        s3_put.PutSettings(
            bucket_region=cfg.region,
            endpoint_url=cfg.endpoint_url,
            max_attempts=transfer.max_attempts,
            connect_timeout=transfer.connect_timeout_seconds,
            read_timeout=transfer.read_timeout_seconds,
            session=session,
            throttle=throttle,
            encryption=tuple(sorted(encryption.items())),
        ),
    )
    if encryption:  # every write through boto3 asks for it; obstore's store is made with it
        for operation in ("PutObject", "CreateMultipartUpload", "CopyObject"):
            client.meta.events.register(
                f"before-parameter-build.s3.{operation}",
                functools.partial(_encrypted, encryption),
            )
    if throttle is not None:  # boto3's uploads: multipart parts, and bodies too coarse
        # for obstore's pacing (pdata_sync.archive.s3_put)
        for operation in ("UploadPart", "PutObject"):
            client.meta.events.register(
                f"before-send.s3.{operation}", functools.partial(_paced, throttle)
            )
    # No "Expect: 100-continue": it costs a round trip per PUT (about half the time of a
    # small upload against a nearby server) to save sending a body S3 would refuse, which
    # for our parts of at most a few MB is the cheaper risk.
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def _encrypted(encryption: dict[str, str], params: dict[str, Any], **_: Any) -> None:
    """Before a write's request is built: the configured encryption at rest, unless the
    call names its own."""
    for name, value in encryption.items():
        params.setdefault(name, value)


def _paced(throttle: Throttle, request: Any, **_: Any) -> None:
    """Before a body goes out: it is read out under the cap as it is sent (each attempt;
    a retry rewinds the same paced body)."""
    if request.body is not None and not isinstance(request.body, PacedBody):
        request.body = PacedBody(request.body, throttle)


def check_bucket(client: Any, bucket: str, *, locked: bool = False) -> None:
    """Make sure the bucket exists and these credentials can reach it, else :class:`ConfigError`.
    ``locked`` (s3.object_lock is set, or a legal hold is asked for): it must also have
    versioning and Object Lock enabled, or no version could be locked or held."""
    try:
        client.head_bucket(Bucket=bucket)
        if locked:
            _check_object_lock(client, bucket)
    except NoCredentialsError:
        raise ConfigError(s3_put.NO_CREDENTIALS) from None
    except EndpointConnectionError as exc:
        raise ConfigError(f"S3: cannot connect to {exc.kwargs.get('endpoint_url')}") from None
    except ClientError as exc:
        if classify(exc) is ErrorKind.CONFIG:
            raise ConfigError(s3_config_message(exc, bucket)) from None
        raise ConfigError(f"S3: bucket {bucket!r} cannot be checked: {describe(exc)}") from None


def _check_object_lock(client: Any, bucket: str) -> None:
    """Refuse a bucket that cannot keep locked versions (one line, as a ConfigError)."""
    refused = (
        f"S3: bucket {bucket!r} {{}}, which s3.object_lock and legal holds need: create "
        "the bucket with Object Lock enabled (it enables versioning too); nothing was written"
    )
    try:
        lock = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if s3_code(exc)[1] in ("ObjectLockConfigurationNotFoundError", "404", "NoSuchBucket"):
            raise ConfigError(refused.format("has no Object Lock")) from None
        raise
    if (lock.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") != "Enabled":
        raise ConfigError(refused.format("has no Object Lock"))
    if client.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        raise ConfigError(refused.format("is not versioned"))
