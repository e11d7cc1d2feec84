"""The Orthanc REST calls pdata-sync makes (docs/orthanc.md), with their errors read into
the product's taxonomy (pdata_sync.base.errors) here and nowhere else.

* ``GET /system`` - the check at the start of a run: unreachable
  (:class:`OrthancUnreachable`), or credentials refused, is a
  :class:`~pdata_sync.base.errors.ConfigError` naming the server (never the password); a sync
  records it as :class:`Unavailable` and goes on with S3.
* ``POST /instances`` - store one DICOM file. ``Success`` and ``AlreadyStored`` are both
  done; a 400 is Orthanc refusing that file (:class:`OrthancRejected`, bad input, with
  Orthanc's own message); 5xx, timeouts and resets are retried.
* ``GET /instances/{id}`` - does Orthanc still hold it (``verify``).
* ``GET /instances/{id}/file`` after an ``AlreadyStored`` - is what Orthanc holds the
  content just sent (Orthanc keeps the first file of a SOP Instance UID and answers
  ``AlreadyStored`` to any other); ``DELETE /instances/{id}`` - take back an earlier content
  pdata-sync itself stored there, so the current one can be stored.
* ``GET /instances/{id}/preview`` - a PNG of the image, drawn by Orthanc.
* ``GET /instances/{id}/file``, ``POST /tools/find`` - an instance's file, and finding
  instances by UID (research export, when the archive lacks one).

Orthanc's ids are deterministic: SHA-1 over the patient id and UIDs
(:func:`instance_ids`), so an instance's id is known before any call.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from pdata_sync.base.config import OrthancConfig
from pdata_sync.base.errors import BadInputError, ConfigError, PermanentError, TransientError
from pdata_sync.base.retrying import call_with_retries

SUCCESS = "Success"
ALREADY_STORED = "AlreadyStored"
_DETAIL_MAX = 200


class OrthancRejected(BadInputError):
    """Orthanc answered 400 to a file: it will not take it as it is."""


class OrthancUnreachable(ConfigError):
    """Orthanc did not answer the check at all (down, wrong host, a network problem): the
    environment, not the set-up. A sync goes on to S3 and ends Failed (exit 1)."""


@dataclass(frozen=True)
class Unavailable:
    """Why a run cannot use the clinic's Orthanc, found by the check at its start. S3, the
    archive of record, is synced all the same (product-rules §12.4). ``config``: the set-up
    is wrong (credentials refused, not Orthanc at that URL; exit 2), else it did not answer
    (exit 1)."""

    reason: str
    config: bool

    @classmethod
    def of(cls, exc: ConfigError) -> Unavailable:
        return cls(str(exc), config=not isinstance(exc, OrthancUnreachable))


@dataclass(frozen=True)
class OrthancInstance:
    """Orthanc's answer to a stored file: its ids and whether it was new."""

    instance_id: str
    series_id: str
    study_id: str
    patient_id: str
    status: str  # Success | AlreadyStored


def _sha1_id(text: str) -> str:
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()  # noqa: S324 - Orthanc's id scheme
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def instance_ids(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> OrthancInstance:
    """The ids Orthanc gives an instance with these tags (its DicomInstanceHasher)."""
    return OrthancInstance(
        instance_id=_sha1_id(f"{patient_id}|{study_uid}|{series_uid}|{sop_uid}"),
        series_id=_sha1_id(f"{patient_id}|{study_uid}|{series_uid}"),
        study_id=_sha1_id(f"{patient_id}|{study_uid}"),
        patient_id=_sha1_id(patient_id),
        status="",
    )


# What Orthanc's answers may be, checked before they are trusted (docs/orthanc.md).
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")  # SHA-1 in five groups
STATUSES = frozenset({SUCCESS, ALREADY_STORED})
JSON_MAX = 4 << 20  # every JSON answer is small: a few MB is already absurd
PREVIEW_MAX = 64 << 20  # a PNG of one X-ray
FILE_MAX = 2 << 30  # an instance found by UID, whose size the catalog does not know
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER_LINE = re.compile(r"^\s*[A-Za-z0-9-]{2,40}\s*:\s")
_CREDENTIAL = re.compile(r"(?i)\b(basic|bearer|digest)\s+[A-Za-z0-9+/=._~-]{4,}")


@dataclass(frozen=True)
class Answer:
    """What Orthanc answered, its body read up to a limit."""

    status: int
    content_type: str
    content: bytes
    reason_phrase: str = ""

    def json(self) -> Any:
        return json.loads(self.content)


def clean_message(text: object, limit: int = 160) -> str:
    """A server's words made safe to print, store and publish: the first line only,
    printable characters only, nothing that looks like an HTTP header or a credential
    (a server that echoes the request would otherwise hand back our Authorization)."""
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    if _HEADER_LINE.match(first):
        return ""
    printable = "".join(c for c in first if c.isprintable())
    return _CREDENTIAL.sub(r"\1 <redacted>", printable)[:limit].strip()


def _detail(answer: Answer) -> str:
    """Orthanc's error, as status, Orthanc's error code and a cleaned, bounded message;
    never a body that is not Orthanc's JSON error (an HTML page, an echo)."""
    try:
        body: Any = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return answer.reason_phrase or "no Orthanc error"
    what = clean_message(body.get("OrthancError") or body.get("Message") or "", 80)
    code = body.get("OrthancStatus")
    details = clean_message(body.get("Details") or "")
    text = what or answer.reason_phrase or "error"
    if isinstance(code, int) and not isinstance(code, bool):
        text += f" (Orthanc error {code})"
    return f"{text}: {details}" if details and details != what else text


def _is_orthanc_error(answer: Answer) -> bool:
    try:
        body = answer.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "OrthancStatus" in body


def _raise_for(answer: Answer, what: str) -> None:
    status = answer.status
    if status < 400:
        return
    if status in (401, 403):
        raise ConfigError(f"{what}: Orthanc refused the credentials ({status})")
    if status == 429 or status >= 500:
        raise TransientError(f"{what}: Orthanc answered {status}: {_detail(answer)}")
    raise PermanentError(f"{what}: Orthanc answered {status}: {_detail(answer)}")


def _orthanc_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not ORTHANC_ID.fullmatch(value):
        raise PermanentError(f"{what}: Orthanc's answer has no valid id ({_shown(value)})")
    return value


def _shown(value: object) -> str:
    return clean_message(repr(value), 40) or "?"


def insecure(cfg: OrthancConfig) -> list[str]:
    """Why the clinic's Orthanc settings expose something on the network: a password sent
    over plain http to another machine, or TLS certificates not checked. Printed at
    check-config and at the start of each run that uses Orthanc."""
    parsed = urlsplit(cfg.url)
    loopback = (parsed.hostname or "") in ("127.0.0.1", "::1", "localhost")
    found = []
    if cfg.username and parsed.scheme == "http" and not loopback:
        found.append(
            f"orthanc: {cfg.url} is plain http: the password of {cfg.username!r} crosses the "
            "network readable by anyone on it; use https"
        )
    if not cfg.verify_tls and parsed.scheme == "https":
        found.append(
            f"orthanc: verify_tls is false: any server can pose as {cfg.url} and receive the "
            "images (and the password)"
        )
    return found


def warn_if_insecure(cfg: OrthancConfig | None, logger: Any) -> None:
    """At the start of a run that uses Orthanc: log what its settings expose."""
    for warning in insecure(cfg) if cfg is not None else []:
        logger.warning("%s", warning)


class OrthancClient:
    """One Orthanc server: a pooled HTTP client with the clinic's credentials."""

    def __init__(self, cfg: OrthancConfig, password: str | None):
        if cfg.username and password is None:
            raise ConfigError(
                f"orthanc: no password for user {cfg.username!r} at {cfg.url}: set "
                "orthanc.password_secret_block or PDATA_SYNC_ORTHANC_PASSWORD"
            )
        self.cfg = cfg
        self.url = cfg.url
        auth = httpx.BasicAuth(cfg.username, password or "") if cfg.username else None
        self._http = httpx.Client(
            base_url=cfg.url,
            auth=auth,
            verify=cfg.verify_tls,
            timeout=cfg.timeout_seconds,
            limits=httpx.Limits(max_connections=cfg.concurrency + 2),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, what: str, limit: int, **kwargs: Any) -> Answer:
        """One request, its body read up to ``limit`` bytes: a larger one is refused, never
        held whole (a server answering 200 MB to /system must not take the worker's
        memory with it)."""
        with self._http.stream(method, path, **kwargs) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise PermanentError(f"{what}: Orthanc's answer is {declared} bytes (> {limit})")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise PermanentError(f"{what}: Orthanc's answer is over {limit} bytes")
            return Answer(
                response.status_code,
                response.headers.get("content-type", ""),
                bytes(body),
                response.reason_phrase,
            )

    def _call(
        self, method: str, path: str, what: str, limit: int = JSON_MAX, **kwargs: Any
    ) -> Answer:
        def once() -> Answer:
            answer = self._request(method, path, what, limit, **kwargs)
            if answer.status != 404 and answer.status != 400:
                _raise_for(answer, what)
            return answer

        return call_with_retries(once, max_attempts=self.cfg.max_attempts, initial_delay=0.5)

    def check(self) -> str:
        """Orthanc's version, or a ConfigError naming the server when it cannot be used."""
        try:
            answer = self._request("GET", "/system", "GET /system", JSON_MAX)
        except httpx.TransportError as exc:
            raise OrthancUnreachable(
                f"orthanc: cannot reach Orthanc at {self.url}: {type(exc).__name__}"
                f"{': ' + clean_message(exc) if str(exc) else ''}"
            ) from None
        except PermanentError as exc:
            raise ConfigError(f"orthanc: {self.url}: {exc}: is this Orthanc?") from None
        if answer.status in (401, 403):
            who = f"user {self.cfg.username!r}" if self.cfg.username else "no credentials"
            raise ConfigError(
                f"orthanc: Orthanc at {self.url} refused the credentials ({who}, "
                f"{answer.status}); check orthanc.username and the password"
            )
        if answer.status != 200:
            raise ConfigError(
                f"orthanc: {self.url}/system answered {answer.status}: is this Orthanc?"
            )
        try:
            version = answer.json()["Version"]
        except (ValueError, KeyError, TypeError):
            version = None
        if not isinstance(version, str) or not re.fullmatch(r"[\w.+-]{1,40}", version):
            raise ConfigError(f"orthanc: {self.url}/system is not Orthanc's answer")
        return version

    def store(self, data: bytes) -> OrthancInstance:
        """Store one DICOM file; Orthanc's ids and status, each checked. A refusal is
        OrthancRejected; an answer that is not Orthanc's (an id that is not an id, a status
        Orthanc does not give) a PermanentError: the image is failed for Orthanc."""
        what = "POST /instances"
        answer = self._call(
            "POST",
            "/instances",
            what,
            content=data,
            headers={"Content-Type": "application/dicom"},
        )
        if answer.status in (400, 404):
            # Orthanc refuses a file it cannot parse with 400 and one without a UID it needs
            # (StudyInstanceUID, ...) with 404 "Inexistent tag", both with its JSON error; a
            # bare 404 means the URL is not Orthanc's REST API
            if not _is_orthanc_error(answer):
                raise ConfigError(f"orthanc: {self.url}/instances not found: is this Orthanc?")
            raise OrthancRejected(f"refused by Orthanc: {_detail(answer)}")
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PermanentError(f"{what}: Orthanc's answer is not its JSON")
        status = body.get("Status")
        if status not in STATUSES:
            raise PermanentError(
                f"{what}: Orthanc's answer has an unknown status ({_shown(status)})"
            )
        return OrthancInstance(
            instance_id=_orthanc_id(body.get("ID"), what),
            series_id=_orthanc_id(body.get("ParentSeries"), what),
            study_id=_orthanc_id(body.get("ParentStudy"), what),
            patient_id=_orthanc_id(body.get("ParentPatient"), what),
            status=status,
        )

    def exists(self, instance_id: str) -> bool:
        """True if Orthanc holds this instance."""
        instance_id = _orthanc_id(instance_id, "GET /instances/{id}")
        answer = self._call("GET", f"/instances/{instance_id}", "GET /instances/{id}")
        if answer.status == 400:
            raise PermanentError(f"GET /instances/{{id}}: 400: {_detail(answer)}")
        return answer.status == 200

    def file(self, instance_id: str, max_bytes: int = FILE_MAX) -> bytes | None:
        """The DICOM file Orthanc holds for the instance (at most ``max_bytes``: the size
        the catalog recorded, when it knows it); None if it holds none."""
        what = "GET /instances/{id}/file"
        instance_id = _orthanc_id(instance_id, what)
        answer = self._call("GET", f"/instances/{instance_id}/file", what, limit=max_bytes)
        if answer.status in (400, 404):
            return None
        if answer.status != 200:
            raise PermanentError(f"{what}: Orthanc answered {answer.status}")
        return answer.content

    def delete(self, instance_id: str) -> bool:
        """Delete the instance; False if Orthanc did not hold it."""
        what = "DELETE /instances/{id}"
        instance_id = _orthanc_id(instance_id, what)
        answer = self._call("DELETE", f"/instances/{instance_id}", what)
        if answer.status == 400:
            raise PermanentError(f"{what}: 400: {_detail(answer)}")
        return answer.status == 200

    def find_instances(self, study_uid: str, sop_uid: str | None = None) -> list[str]:
        """Orthanc's ids of the instances of a study (``POST /tools/find``), or of one
        instance of it."""
        query = {"StudyInstanceUID": study_uid}
        if sop_uid:
            query["SOPInstanceUID"] = sop_uid
        what = "POST /tools/find"
        answer = self._call("POST", "/tools/find", what, json={"Level": "Instance", "Query": query})
        if answer.status in (400, 404):
            raise PermanentError(f"{what}: {answer.status}: {_detail(answer)}")
        try:
            found = answer.json()
        except ValueError:
            found = None
        if not isinstance(found, list):
            raise PermanentError(f"{what}: Orthanc's answer is not a list of ids")
        return [_orthanc_id(i, what) for i in found]

    def preview(self, instance_id: str) -> bytes | None:
        """Orthanc's PNG of the instance's first frame; None if Orthanc does not hold it.
        An answer that is not a PNG (an HTML page with a 200) is a PermanentError: the
        caller draws the preview itself."""
        what = "GET /instances/{id}/preview"
        instance_id = _orthanc_id(instance_id, what)
        answer = self._call(
            "GET",
            f"/instances/{instance_id}/preview",
            what,
            limit=PREVIEW_MAX,
            headers={"Accept": "image/png"},
        )
        if answer.status == 404:
            return None
        if answer.status == 400:
            raise BadInputError(f"Orthanc cannot draw it: {_detail(answer)}")
        kind = answer.content_type.split(";")[0].strip().lower()
        if kind != "image/png" or not answer.content.startswith(PNG_SIGNATURE):
            raise PermanentError(
                f"{what}: Orthanc's answer is not a PNG ({clean_message(kind, 40) or 'no type'})"
            )
        return answer.content
