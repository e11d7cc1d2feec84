"""One error taxonomy for the whole product, interpreted in one place.

* :class:`ConfigError` - the set-up is wrong (bad config, unreachable database, missing
  bucket, access denied). Fail fast, before any work, with one line naming the thing at fault.
* :class:`BadInputError` - one input item is bad (empty file, not DICOM). Reported with its
  path and reason, skipped; the run goes on.
* :class:`TransientError` - may succeed if tried again (429, 5xx, timeouts, throttling).
  Retried with exponential backoff; reported as *failed* when the retries run out.
* :class:`PermanentError` - a single operation failed for good (e.g. a 4xx from the
  resolver for one batch, an object S3 does not find). Reported as *failed*; the run goes on.
* *environment* - the PDATA share or a file cannot be read (missing, permission denied,
  I/O error). Reported as *failed* with the reason (exit 1), never as rejected input.
* :class:`ClinicBusyError` - another sync or verify of the clinic is running; the run
  refuses before any work, naming the holder.

:func:`classify` maps third-party exceptions (httpx, botocore, obstore, OS errors) onto these
kinds; S3 errors by operation and code, from one table (docs/adr/0003-error-taxonomy.md).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pdata_sync.base.url_secrets import redact


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


class ClinicBusyError(PdataSyncError):
    """Another run of the same clinic holds its lock; the message names the holder."""


class ErrorKind(enum.Enum):
    CONFIG = "config"
    BAD_INPUT = "bad_input"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    ENVIRONMENT = "environment"


# How an S3 error code is read, by operation: ("*", code) applies to every operation
# unless (operation, code) says otherwise. A HEAD answer has no body, so its code is the bare
# HTTP status: 404 on HeadBucket is a missing bucket, on HeadObject a missing object.
_S3_RULES: dict[tuple[str, str], ErrorKind] = {
    **{
        ("*", code): ErrorKind.CONFIG
        for code in (
            "NoSuchBucket",
            "AccessDenied",
            "AllAccessDisabled",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidBucketName",
            "AuthorizationHeaderMalformed",
            "PermanentRedirect",
            "403",
        )
    },
    ("HeadBucket", "404"): ErrorKind.CONFIG,
    ("*", "404"): ErrorKind.PERMANENT,  # an object (HeadObject) or upload: that item only
    ("*", "NoSuchKey"): ErrorKind.PERMANENT,
    ("*", "NoSuchUpload"): ErrorKind.PERMANENT,
    **{
        ("*", code): ErrorKind.TRANSIENT
        for code in (
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "RequestTimeout",
            "RequestTimeTooSkewed",
            "InternalError",
            "ServiceUnavailable",
            "500",
            "502",
            "503",
            "504",
            "BadDigest",  # the body was damaged in transit: sending it again may work
        )
    },
}

# The one line an operator reads for an S3 configuration error, by code.
_S3_CONFIG_MESSAGES = {
    "NoSuchBucket": "S3: bucket {bucket!r} does not exist (s3.bucket)",
    "404": "S3: bucket {bucket!r} does not exist (s3.bucket)",
    "AccessDenied": "S3: access denied writing to bucket {bucket!r}: the credentials need "
    "s3:PutObject, s3:GetObject and s3:ListBucket on images/*",
    "403": "S3: access denied writing to bucket {bucket!r}: the credentials need "
    "s3:PutObject, s3:GetObject and s3:ListBucket on images/*",
    "AllAccessDisabled": "S3: all access to bucket {bucket!r} is disabled",
    "InvalidAccessKeyId": "S3: the AWS credentials were refused by bucket {bucket!r} ({code})",
    "SignatureDoesNotMatch": "S3: the AWS credentials were refused by bucket {bucket!r} ({code})",
    "InvalidBucketName": "S3: {bucket!r} is not a valid bucket name (s3.bucket)",
    "PermanentRedirect": "S3: bucket {bucket!r} is in another region (s3.region)",
    "AuthorizationHeaderMalformed": "S3: bucket {bucket!r} is in another region (s3.region)",
}


def s3_code(exc: BaseException) -> tuple[str, str]:
    """(operation, error code) of a botocore ClientError or an obstore error; ("", "") for
    anything else. An obstore error without an answer (connection refused, reset, timeout)
    has the code ""."""
    if _is_obstore(exc):
        answer = _obstore_answer(exc)
        return answer.operation, answer.key
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", ""
    code = str(response.get("Error", {}).get("Code", ""))
    return str(getattr(exc, "operation_name", "") or ""), code


def _is_obstore(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("obstore")


@dataclass(frozen=True)
class _ObstoreAnswer:
    operation: str  # PutObject, ...
    status: str  # the HTTP status S3 answered, "" when none came
    code: str  # S3's error code from the XML body, if any
    message: str  # S3's message, or what went wrong on the way (e.g. "Connection refused")

    @property
    def key(self) -> str:
        """What the S3 rules are looked up by: S3's code, else the bare HTTP status."""
        return self.code or self.status


_OPERATIONS = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject"}


def _obstore_answer(exc: BaseException) -> _ObstoreAnswer:
    """What an obstore error says (it has only text: "Error performing PUT <url> in <t> -
    Server returned non-2xx status code: 503 ...: <Error><Code>SlowDown</Code>...")."""
    text = str(exc)
    method = re.search(r"Error performing (\w+) ", text)
    status = re.search(r"status code: (\d{3})", text)
    code = re.search(r"<Code>([^<]{1,64})</Code>", text)
    message = re.search(r"<Message>([^<]{0,300})</Message>", text)
    if message is None:  # no answer: the transport's reason, else the summary line
        message = re.search(r'message: "([^"]{1,200})"', text) or re.search(
            r" - ([^\n]{1,200})", text
        )
    return _ObstoreAnswer(
        operation=_OPERATIONS.get(method.group(1), "S3") if method else "S3",
        status=status.group(1) if status else "",
        code=code.group(1) if code else "",
        message=message.group(1) if message else text.splitlines()[0][:200],
    )


def _s3_kind(operation: str, code: str) -> ErrorKind:
    return _S3_RULES.get((operation, code)) or _S3_RULES.get(("*", code)) or ErrorKind.PERMANENT


def s3_config_message(exc: BaseException, bucket: str) -> str:
    """One line for an S3 error that means the set-up is wrong, naming the bucket."""
    _, code = s3_code(exc)
    template = _S3_CONFIG_MESSAGES.get(code)
    if template is None:
        return f"S3: bucket {bucket!r}: {describe(exc)}"
    return template.format(bucket=bucket, code=code)


def classify(exc: BaseException) -> ErrorKind:
    """Return the kind of ``exc``: the single place where foreign errors are interpreted."""
    if isinstance(exc, ConfigError):
        return ErrorKind.CONFIG
    if isinstance(exc, BadInputError):
        return ErrorKind.BAD_INPUT
    if isinstance(exc, TransientError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, (PermanentError, ClinicBusyError)):
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
        return _s3_kind(*s3_code(exc))
    if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
        return ErrorKind.TRANSIENT
    if _is_obstore(exc):
        answer = _obstore_answer(exc)
        if type(exc).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
            return ErrorKind.CONFIG
        if not answer.status:  # no answer: refused, reset, timed out
            return ErrorKind.TRANSIENT
        kind = _s3_kind(answer.operation, answer.key)
        if kind is ErrorKind.PERMANENT and not answer.code and answer.status.startswith("5"):
            return ErrorKind.TRANSIENT  # a 5xx without a body
        return kind

    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return ErrorKind.TRANSIENT if status == 429 or status >= 500 else ErrorKind.PERMANENT
    if isinstance(exc, httpx.TransportError):  # timeouts, resets, refused connections
        return ErrorKind.TRANSIENT
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return ErrorKind.TRANSIENT
    if isinstance(exc, IsADirectoryError):
        return ErrorKind.BAD_INPUT  # an entry that is not an image file
    if isinstance(exc, OSError):
        # the share or the file cannot be read (gone, permission denied, I/O error): the
        # environment, not the input; the image is *failed* and the run exits 1
        return ErrorKind.ENVIRONMENT
    return ErrorKind.PERMANENT


_URL = re.compile(r"\w+://\S+")


def _s3_line(operation: str, code: str, status: str) -> str:
    code = re.sub(r"[^A-Za-z0-9._-]", "", code)[:64]  # S3 codes are words: nothing else
    what = " ".join(p for p in (code, f"(HTTP {status})" if status else "") if p) or "error"
    return f"S3 {operation} failed: {what}"


def describe(exc: BaseException) -> str:
    """A one-line, operator-readable description of ``exc`` (no stack trace)."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover
        ClientError = ()  # type: ignore
    # An S3 answer is described by operation, error code and HTTP status, never by its
    # message: servers repeat the request's key there (a research export's pseudonym,
    # which must never stand next to the patientGuid of the archive key it came from).
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        op = getattr(exc, "operation_name", "") or "S3"
        return _s3_line(op, code, str(status or ""))
    if _is_obstore(exc):
        answer = _obstore_answer(exc)
        if answer.status:
            return _s3_line(answer.operation, answer.code, answer.status)
        # no answer: the transport's reason, without the URL it names
        reason = _URL.sub("<url>", answer.message)
        return redact(f"S3 {answer.operation} failed: no answer: {reason}".strip())
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact(text)  # a driver's message may repeat a connection string
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
