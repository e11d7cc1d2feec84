"""The data path of single-PUT uploads: obstore (Rust), for the images and their thumbnails.

botocore's request path costs about three times the CPU of obstore per small PUT, with the
GIL held (bench/RESULTS.md §5); on a 2-core worker that CPU, not the network, limited an
initial sync. obstore signs, hashes and sends with the GIL released. Everything else (listing,
HEAD, multipart uploads, copies, presigned URLs) stays on the boto3 client; ADR 0011 says why.

The guarantees are those of the botocore path (ADR 0004):

* ``x-amz-checksum-sha256``, computed by obstore over the bytes it sends, is verified by S3
  on receipt; a body damaged in transit is refused.
* The ETag S3 answers is returned as :class:`~pdata_sync.archive.uploads.Stored`;
  :func:`~pdata_sync.archive.uploads.confirm_object` compares it with our MD5 of the same bytes
  (where it is no MD5, e.g. SSE-KMS, a HEAD compares S3's SHA-256 with ours).
* Content-Type and the user metadata go with the object.
* Transient errors (5xx, throttling, timeouts, resets, a damaged body) are retried here,
  ``transfer.max_attempts`` tries with exponential backoff and jitter; obstore's own retries
  are off so there is one retry policy. Errors are read by :func:`pdata_sync.base.errors.classify`.

The store is made with the boto3 client (:func:`pdata_sync.archive.s3_client.make_client`) from the
same settings and the same credentials (a Prefect block's keys, or boto3's standard chain,
refreshed through botocore).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pdata_sync.base.bandwidth import Throttle
from pdata_sync.base.errors import ConfigError, s3_code
from pdata_sync.base.retrying import call_with_retries

# How long obstore may keep credentials before asking botocore again (botocore refreshes
# temporary credentials itself, well before they expire).
_CREDENTIALS_FOR = timedelta(minutes=5)
# A whole single PUT (at most transfer.multipart_threshold_mb) may take this long.
_REQUEST_TIMEOUT = timedelta(minutes=15)


@dataclass(frozen=True)
class PutSettings:
    """What the store is made from; kept by :func:`register` for each boto3 client."""

    bucket_region: str
    endpoint_url: str | None
    max_attempts: int
    connect_timeout: float
    read_timeout: float
    session: Any  # boto3.session.Session: its credentials
    throttle: Throttle | None = None  # the uploads' bandwidth (pdata_sync.base.bandwidth)
    encryption: tuple[tuple[str, str], ...] = ()  # S3Config.encryption(), as pairs


NO_CREDENTIALS = (
    "S3: no AWS credentials found (set s3.aws_credentials_block, or "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile on the worker)"
)
_SETTINGS: weakref.WeakKeyDictionary[Any, PutSettings] = weakref.WeakKeyDictionary()
_STORES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
# Whether the server checks x-amz-checksum-sha256, per client and bucket (checks_sha256).
_CHECKS: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()
_CHECKS_LOCK = threading.Lock()
# What S3 answers when a body does not match the x-amz-checksum-sha256 sent with it (AWS and
# SeaweedFS: BadDigest; MinIO: XAmzContentChecksumMismatch).
CHECKSUM_MISMATCH = frozenset({"BadDigest", "XAmzContentChecksumMismatch"})


def register(client: Any, settings: PutSettings) -> None:
    """Remember how ``client`` was made, so uploads through it can use obstore."""
    _SETTINGS[client] = settings


class _Credentials:
    """obstore's credential callback, answered from the boto3 session's credentials."""

    def __init__(self, session: Any):
        self.session = session

    def __call__(self) -> dict[str, Any]:
        credentials = self.session.get_credentials()
        if credentials is None:
            raise ConfigError(NO_CREDENTIALS)
        frozen = credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + _CREDENTIALS_FOR,
        }


def store_of(client: Any, bucket: str) -> Any:
    """The obstore S3Store of ``client``'s settings for ``bucket`` (one per client and
    bucket, shared by the upload threads and the walks of ``images/``)."""
    with _LOCK:
        stores = _STORES.setdefault(client, {})
        if bucket in stores:
            return stores[bucket]
        settings = settings_of(client)
        if settings.session.get_credentials() is None:
            raise ConfigError(NO_CREDENTIALS)
        from obstore.store import S3Store

        config: dict[str, Any] = {
            "region": settings.bucket_region,
            "checksum_algorithm": "sha256",
        }
        encryption = dict(settings.encryption)
        if "ServerSideEncryption" in encryption:  # every PUT asks S3 to encrypt at rest
            config["server_side_encryption"] = encryption["ServerSideEncryption"]
        if "SSEKMSKeyId" in encryption:
            config["sse_kms_key_id"] = encryption["SSEKMSKeyId"]
        client_options: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=settings.connect_timeout),
            "read_timeout": timedelta(seconds=settings.read_timeout),
            "timeout": _REQUEST_TIMEOUT,
            "user_agent": "pdata-sync",
        }
        if settings.endpoint_url:
            config["endpoint"] = settings.endpoint_url.rstrip("/")
            config["virtual_hosted_style_request"] = False
            client_options["allow_http"] = settings.endpoint_url.startswith("http://")
        client_options.update(_like_boto3(settings.endpoint_url))
        store = S3Store(
            bucket,
            config=config,
            client_options=client_options,
            retry_config={"max_retries": 0},  # one retry policy: ours (put_object)
            credential_provider=_Credentials(settings.session),
        )
        stores[bucket] = store
        return store


def _like_boto3(endpoint_url: str | None) -> dict[str, Any]:
    """The CA bundle and proxy boto3 would use from the environment (AWS_CA_BUNDLE,
    HTTPS_PROXY / HTTP_PROXY, NO_PROXY), so both clients reach S3 the same way."""
    options: dict[str, Any] = {}
    if ca_bundle := os.environ.get("AWS_CA_BUNDLE"):
        try:
            options["root_certificate"] = Path(ca_bundle).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"AWS_CA_BUNDLE: cannot read {ca_bundle}: {exc}") from None
    https = (endpoint_url or "https://").startswith("https://")
    names = ("HTTPS_PROXY", "https_proxy") if https else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[n] for n in names if os.environ.get(n)), None)
    if proxy:
        options["proxy_url"] = proxy
        if no_proxy := os.environ.get("NO_PROXY") or os.environ.get("no_proxy"):
            options["proxy_excludes"] = no_proxy
    return options


def settings_of(client: Any) -> PutSettings:
    """How ``client`` was made (:func:`register`)."""
    settings = _SETTINGS.get(client)
    if settings is None:
        raise TypeError("the S3 client was not made by pdata_sync.archive.s3_client.make_client")
    return settings


def put_object(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    *,
    content_type: str,
    metadata: dict[str, str],
    lock: dict[str, Any] | None = None,
) -> str:
    """PUT ``data`` under ``key`` in one request with S3's SHA-256 check; returns the ETag
    S3 answered (without quotes, "" if none). Transient errors are retried. ``lock``: the
    version's Object Lock (pdata_sync.archive.retention.lock_params), which obstore cannot
    send, so a locked PUT goes through boto3."""
    import obstore

    settings = settings_of(client)
    if lock or (
        settings.throttle is not None and settings.throttle.whole_body_too_coarse(len(data))
    ):
        return _put_boto3(client, bucket, key, data, content_type, metadata, lock)

    store = store_of(client, bucket)
    attributes: dict[str, str] = {"Content-Type": content_type, **metadata}

    def once() -> Any:
        if settings.throttle is not None:  # every attempt sends the body again
            settings.throttle.take(len(data))
        return obstore.put(store, key, data, attributes=attributes, use_multipart=False)

    result = call_with_retries(once, max_attempts=settings.max_attempts)
    return str(result.get("e_tag") or "").strip('"')


def _put_boto3(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    content_type: str,
    metadata: dict[str, str],
    lock: dict[str, Any] | None,
) -> str:
    """The same PUT through boto3, for what obstore cannot do: a body that must be paced as
    it is sent under a cap (obstore sends a body whole; the client's hook reads it out under
    the throttle, pdata_sync.archive.s3_client), or a version with an Object Lock. S3 checks
    the same ``x-amz-checksum-sha256`` (which also stands for the Content-MD5 a locked PUT
    needs); botocore retries transient errors (``transfer.max_attempts``). A capped upload
    waits on the link, so botocore's CPU per request does not matter there."""
    response = client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType=content_type,
        Metadata=metadata,
        ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode("ascii"),
        **(lock or {}),
    )
    return str(response.get("ETag") or "").strip('"')


def checks_sha256(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    *,
    content_type: str,
    metadata: dict[str, str],
    lock: dict[str, Any] | None = None,
) -> bool:
    """Whether the server refuses a body that does not match its ``x-amz-checksum-sha256``.

    Asked once per client and bucket, by the first upload: ``data`` is sent to ``key`` (with
    boto3) with a SHA-256 that is not its own.

    * Refused as a checksum mismatch (:data:`CHECKSUM_MISMATCH`): the server checks the
      SHA-256 every upload carries, so its 200 already says it holds the bytes sent, and no
      MD5 of them is needed to confirm it (ADR 0004). Nothing was stored.
    * Accepted: the server stored ``data`` (the real bytes, type and metadata) without
      checking. The upload that follows replaces it and is confirmed by its MD5 ETag.
    * Any other answer (an error, after boto3's retries): not shown, so treated as not
      checking for the rest of the client's life (one run): the uploads take an MD5, as
      they all did before this question was asked. Asking again per upload would add
      requests to a server that is already failing.
    """
    with _CHECKS_LOCK:
        known = _CHECKS.setdefault(client, {})
        if bucket not in known:
            not_its_own = hashlib.sha256(b"not the body: " + data).digest()
            try:
                client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    Metadata=metadata,
                    ChecksumSHA256=base64.b64encode(not_its_own).decode("ascii"),
                    **(lock or {}),  # a version stored unchecked is locked like the rest
                )
                known[bucket] = False  # stored unchecked
            except Exception as exc:  # noqa: BLE001 - every answer is a verdict, read here
                known[bucket] = s3_code(exc)[1] in CHECKSUM_MISMATCH
        return known[bucket]
