"""One error taxonomy for the whole product, interpreted in one place.

* :class:`ConfigError` - the set-up is wrong (bad config, unreachable database, missing
  bucket, access denied). Fail fast, before any work, with one line naming the thing at fault.
* :class:`BadInputError` - one input item is bad (empty file, not DICOM). Reported with its
  path and reason, skipped; the run goes on.
* :class:`TransientError` - may succeed if tried again (429, 5xx, timeouts, throttling).
  Retried with exponential backoff; reported as *failed* when the retries run out.
* :class:`PermanentError` - a single operation failed for good (e.g. a 4xx from the
  resolver for one batch). Reported as *failed*; the run goes on.

:func:`classify` maps third-party exceptions (httpx, botocore, OS errors) onto these kinds.
"""

from __future__ import annotations

import enum


class PdataSyncError(Exception):
    """Base class of every error this product raises on purpose."""


class ConfigError(PdataSyncError):
    """The configuration or environment is wrong; nothing can be done until it is fixed."""


class InvalidRequestError(ConfigError):
    """A request (e.g. a retrieval's patientGuid) is refused before any work is done."""


class BadInputError(PdataSyncError):
    """One input item (a file, a row) is unusable; it is reported and skipped."""


class TransientError(PdataSyncError):
    """A failure that may go away when retried.

    ``retry_after`` carries a server's ``Retry-After`` hint in seconds, when it gave one.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class SourceChangedError(TransientError):
    """A source file changed while it was being read or uploaded (still being written?)."""


class PermanentError(PdataSyncError):
    """A failure that retrying will not fix, limited to one operation."""


class ErrorKind(enum.Enum):
    CONFIG = "config"
    BAD_INPUT = "bad_input"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# S3 error codes that mean the set-up is wrong rather than one object.
_S3_CONFIG_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "403",
    "404",
}
_S3_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "BadDigest",  # the body was damaged in transit: sending it again may work
}


def classify(exc: BaseException) -> ErrorKind:
    """Return the kind of ``exc``: the single place where foreign errors are interpreted."""
    if isinstance(exc, ConfigError):
        return ErrorKind.CONFIG
    if isinstance(exc, BadInputError):
        return ErrorKind.BAD_INPUT
    if isinstance(exc, TransientError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, PermanentError):
        return ErrorKind.PERMANENT

    # botocore (imported lazily: classify is also used where boto3 is not)
    try:
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )
    except ImportError:  # pragma: no cover - boto3 is a hard dependency
        ClientError = BotoConnectionError = NoCredentialsError = ReadTimeoutError = ()  # type: ignore
    if isinstance(exc, NoCredentialsError):
        return ErrorKind.CONFIG
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _S3_CONFIG_CODES:
            return ErrorKind.CONFIG
        if code in _S3_TRANSIENT_CODES:
            return ErrorKind.TRANSIENT
        return ErrorKind.PERMANENT
    if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
        return ErrorKind.TRANSIENT

    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return ErrorKind.TRANSIENT if status == 429 or status >= 500 else ErrorKind.PERMANENT
    if isinstance(exc, httpx.TransportError):  # timeouts, resets, refused connections
        return ErrorKind.TRANSIENT
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return ErrorKind.TRANSIENT
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return ErrorKind.BAD_INPUT
    return ErrorKind.PERMANENT


def describe(exc: BaseException) -> str:
    """A one-line, operator-readable description of ``exc`` (no stack trace)."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover
        ClientError = ()  # type: ignore
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        msg = err.get("Message") or ""
        op = getattr(exc, "operation_name", "") or "S3"
        return f"S3 {op} failed: {code} {msg}".strip()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
