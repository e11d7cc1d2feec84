"""The Orthanc REST calls pdata-sync makes (docs/orthanc.md), with their errors read into
the product's taxonomy (pdata_sync.errors) here and nowhere else.

* ``GET /system`` - the check at the start of a run: unreachable
  (:class:`OrthancUnreachable`), or credentials refused, is a
  :class:`~pdata_sync.errors.ConfigError` naming the server (never the password); a sync
  records it as :class:`Unavailable` and goes on with S3.
* ``POST /instances`` - store one DICOM file. ``Success`` and ``AlreadyStored`` are both
  done; a 400 is Orthanc refusing that file (:class:`OrthancRejected`, bad input, with
  Orthanc's own message); 5xx, timeouts and resets are retried.
* ``GET /instances/{id}`` - does Orthanc still hold it (``verify``).
* ``GET /instances/{id}/preview`` - a PNG of the image, drawn by Orthanc.
* ``GET /instances/{id}/file``, ``POST /tools/find`` - an instance's file, and finding
  instances by UID (research export, when the archive lacks one).

Orthanc's ids are deterministic: SHA-1 over the patient id and UIDs
(:func:`instance_ids`), so an instance's id is known before any call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx

from .config import OrthancConfig
from .errors import BadInputError, ConfigError, PermanentError, TransientError
from .retrying import call_with_retries

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


def _detail(response: httpx.Response) -> str:
    """Orthanc's own words for a refusal (its JSON error's Details or Message)."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:_DETAIL_MAX] or response.reason_phrase
    if isinstance(body, dict):
        text = body.get("Details") or body.get("Message") or body.get("OrthancError")
        if text:
            return str(text)[:_DETAIL_MAX]
    return response.reason_phrase


def _is_orthanc_error(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "OrthancStatus" in body


def _raise_for(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in (401, 403):
        raise ConfigError(f"{what}: Orthanc refused the credentials ({status})")
    if status == 429 or status >= 500:
        raise TransientError(f"{what}: Orthanc answered {status}: {_detail(response)}")
    raise PermanentError(f"{what}: Orthanc answered {status}: {_detail(response)}")


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

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            response = self._http.request(method, path, **kwargs)
            if response.status_code != 404 and response.status_code != 400:
                _raise_for(response, what)
            return response

        return call_with_retries(once, max_attempts=self.cfg.max_attempts, initial_delay=0.5)

    def check(self) -> str:
        """Orthanc's version, or a ConfigError naming the server when it cannot be used."""
        try:
            response = self._http.get("/system")
        except httpx.TransportError as exc:
            raise OrthancUnreachable(
                f"orthanc: cannot reach Orthanc at {self.url}: {type(exc).__name__}"
                f"{': ' + str(exc) if str(exc) else ''}"
            ) from None
        if response.status_code in (401, 403):
            who = f"user {self.cfg.username!r}" if self.cfg.username else "no credentials"
            raise ConfigError(
                f"orthanc: Orthanc at {self.url} refused the credentials ({who}, "
                f"{response.status_code}); check orthanc.username and the password"
            )
        if response.status_code != 200:
            raise ConfigError(
                f"orthanc: {self.url}/system answered {response.status_code}: is this Orthanc?"
            )
        try:
            return str(response.json()["Version"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"orthanc: {self.url}/system is not Orthanc's answer") from None

    def store(self, data: bytes) -> OrthancInstance:
        """Store one DICOM file; Orthanc's ids and status. A refusal is OrthancRejected."""
        response = self._call(
            "POST",
            "/instances",
            "POST /instances",
            content=data,
            headers={"Content-Type": "application/dicom"},
        )
        if response.status_code in (400, 404):
            # Orthanc refuses a file it cannot parse with 400 and one without a UID it needs
            # (StudyInstanceUID, ...) with 404 "Inexistent tag", both with its JSON error; a
            # bare 404 means the URL is not Orthanc's REST API
            if not _is_orthanc_error(response):
                raise ConfigError(f"orthanc: {self.url}/instances not found: is this Orthanc?")
            raise OrthancRejected(f"refused by Orthanc: {_detail(response)}")
        try:
            body = response.json()
            answer = OrthancInstance(
                instance_id=str(body["ID"]),
                series_id=str(body["ParentSeries"]),
                study_id=str(body["ParentStudy"]),
                patient_id=str(body["ParentPatient"]),
                status=str(body["Status"]),
            )
        except (ValueError, KeyError, TypeError):
            raise PermanentError("Orthanc's answer to POST /instances is not its format") from None
        if answer.status not in (SUCCESS, ALREADY_STORED):
            raise PermanentError(f"Orthanc did not store it (status {answer.status!r})")
        return answer

    def exists(self, instance_id: str) -> bool:
        """True if Orthanc holds this instance."""
        response = self._call("GET", f"/instances/{instance_id}", "GET /instances/{id}")
        if response.status_code == 400:
            raise PermanentError(f"GET /instances/{{id}}: 400: {_detail(response)}")
        return response.status_code == 200

    def file(self, instance_id: str) -> bytes | None:
        """The DICOM file Orthanc holds for the instance; None if it holds none."""
        response = self._call("GET", f"/instances/{instance_id}/file", "GET /instances/{id}/file")
        if response.status_code in (400, 404):
            return None
        return response.content

    def find_instances(self, study_uid: str, sop_uid: str | None = None) -> list[str]:
        """Orthanc's ids of the instances of a study (``POST /tools/find``), or of one
        instance of it."""
        query = {"StudyInstanceUID": study_uid}
        if sop_uid:
            query["SOPInstanceUID"] = sop_uid
        response = self._call(
            "POST",
            "/tools/find",
            "POST /tools/find",
            json={"Level": "Instance", "Query": query},
        )
        if response.status_code in (400, 404):
            raise PermanentError(f"POST /tools/find: {response.status_code}: {_detail(response)}")
        return [str(i) for i in response.json()]

    def preview(self, instance_id: str) -> bytes | None:
        """Orthanc's PNG of the instance's first frame; None if Orthanc does not hold it."""
        response = self._call(
            "GET",
            f"/instances/{instance_id}/preview",
            "GET /instances/{id}/preview",
            headers={"Accept": "image/png"},
        )
        if response.status_code == 404:
            return None
        if response.status_code == 400:
            raise BadInputError(f"Orthanc cannot draw it: {_detail(response)}")
        return response.content
