"""Client of the platform's CardId -> patientGuid resolver (docs/product-rules.md §5), with a cache.

CardIds are patient identifiers: they are never logged, and the on-disk cache stores only
salted SHA-256 hashes of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pdata_sync.base.config import ResolverConfig
from pdata_sync.base.errors import (
    ConfigError,
    ErrorKind,
    PermanentError,
    TransientError,
    classify,
    describe,
)
from pdata_sync.base.retrying import call_with_retries, parse_retry_after
from pdata_sync.identity.rules import conflict, guid_fault

log = logging.getLogger(__name__)


@dataclass
class ResolveResult:
    """``mapping``: CardId -> patientGuid; ``unknown``: CardIds the platform does not know;
    ``failed``: CardId -> reason for CardIds whose batch could not be resolved."""

    mapping: dict[str, str] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    from_cache: int = 0
    calls: int = 0


class ResolutionCache:
    """Positive resolutions kept across runs for ``ttl_seconds``, keyed by hashed CardId."""

    def __init__(self, path: Path, clinic_id: str, ttl_seconds: float):
        self.path = path
        self.ttl = ttl_seconds
        self._salt = f"pdata-sync:{clinic_id}:"
        self._entries: dict[str, tuple[str, float]] = {}
        self._dirty = False
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            now = time.time()
            self._entries = {
                k: (v[0], float(v[1]))
                for k, v in raw.get("entries", {}).items()
                if float(v[1]) > now and guid_fault(v[0]) is None
            }
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            log.warning("resolver cache %s is unreadable; starting with an empty cache", path)

    def _key(self, card_id: str) -> str:
        return hashlib.sha256((self._salt + card_id).encode()).hexdigest()

    def get(self, card_id: str) -> str | None:
        entry = self._entries.get(self._key(card_id))
        if entry and entry[1] > time.time():
            return entry[0]
        return None

    def put(self, card_id: str, guid: str) -> None:
        self._entries[self._key(card_id)] = (guid, time.time() + self.ttl)
        self._dirty = True

    def drop(self, card_id: str) -> None:
        if self._entries.pop(self._key(card_id), None) is not None:
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".resolver-cache-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": 1, "entries": self._entries}, fh)
        os.replace(tmp, self.path)
        self._dirty = False


def _tls_problem(exc: BaseException) -> str | None:
    """The certificate verification failure behind ``exc``, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or "certificate verify failed"
        if "CERTIFICATE_VERIFY_FAILED" in str(current):
            return "certificate verify failed"
        current = current.__cause__ or current.__context__
    return None


def _error_message(response: httpx.Response) -> str:
    """The ABP envelope's message, if any (never the request body)."""
    try:
        err = response.json().get("error") or {}
        msg = err.get("message") or err.get("code") or ""
    except (ValueError, AttributeError):
        msg = ""
    return f"HTTP {response.status_code}" + (f" {str(msg)[:200]}" if msg else "")


@dataclass
class Answer:
    """One resolver answer: CardId -> patientGuid (None: the platform does not know it),
    and CardId -> fault for patientGuids that cannot name a patient (docs/adr/0007)."""

    guids: dict[str, str | None]
    faults: dict[str, str] = field(default_factory=dict)


def parse_response(response: httpx.Response, asked: list[str]) -> Answer:
    """Validate a resolver response; map each CardId asked for to a patientGuid or None,
    or to a fault (malformed or nil patientGuid, several patientGuids for one CardId).

    Raises :class:`TransientError` for answers that look like a glitch (malformed JSON,
    wrong content type) so they are retried.
    """
    ctype = response.headers.get("content-type", "")
    if "json" not in ctype.lower():
        raise TransientError(f"resolver answered with content type {ctype or 'none'!r}, not JSON")
    try:
        body = response.json()
    except ValueError:
        raise TransientError("resolver answered with malformed JSON") from None
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise TransientError("resolver answer has no 'items' list")
    wanted = set(asked)
    given: dict[str, set[str]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        card = item.get("cardId")
        guid = item.get("patientGuid")
        if not isinstance(card, str) or card not in wanted or guid is None:
            continue
        given.setdefault(card, set()).add(str(guid).strip().lower())
    answer = Answer(dict.fromkeys(asked))
    for card, guids in given.items():
        fault = conflict(guids) if len(guids) > 1 else guid_fault(next(iter(guids)))
        if fault:
            answer.faults[card] = fault
            del answer.guids[card]
        else:
            answer.guids[card] = next(iter(guids))
    if answer.faults:
        log.warning(
            "resolver: %d CardId(s) answered with a patientGuid that cannot name a patient "
            "(%s); their images fail",
            len(answer.faults),
            "; ".join(sorted(set(answer.faults.values()))),
        )
    return answer


class ResolverClient:
    """Resolves CardIds in batches, retrying transient errors, reusing cached answers."""

    def __init__(
        self,
        cfg: ResolverConfig,
        clinic_id: str,
        cache: ResolutionCache | None = None,
        *,
        initial_delay: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        self.cfg = cfg
        self.clinic_id = clinic_id
        self.cache = cache
        self.initial_delay = initial_delay
        self._client = httpx.Client(
            timeout=cfg.timeout_seconds,
            verify=cfg.verify_tls,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "pdata-sync"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ResolverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, batch: list[str]) -> Answer:
        try:
            response = self._client.post(
                self.cfg.url, json={"clinicId": self.clinic_id, "cardIds": batch}
            )
        except httpx.TimeoutException:
            raise TransientError("resolver timed out") from None
        except httpx.TransportError as exc:
            tls = _tls_problem(exc)
            if tls:
                host = httpx.URL(self.cfg.url).host
                raise ConfigError(
                    f"resolver {host}: TLS certificate not trusted ({tls}); install the "
                    "right CA on the worker, or for testing only set resolver.verify_tls: false"
                ) from None
            raise TransientError(f"resolver unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(
                f"resolver {_error_message(response)}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if response.status_code >= 400:
            raise PermanentError(f"resolver {_error_message(response)}")
        return parse_response(response, batch)

    def resolve(self, card_ids: list[str], *, refresh: bool = False) -> ResolveResult:
        """Resolve ``card_ids`` (distinct, trimmed). Never raises for a failed batch: its
        CardIds land in ``failed`` with the reason; the other batches go on.

        ``refresh`` (a full run): ask the resolver for every CardId, ignoring cached
        answers, and replace them (a CardId now unknown loses its cached patientGuid), so
        a remapped patient is seen now and later runs do not fall back to the old answer."""
        result = ResolveResult()
        todo: list[str] = []
        for card in dict.fromkeys(card_ids):
            cached = self.cache.get(card) if self.cache and not refresh else None
            if cached:
                result.mapping[card] = cached
                result.from_cache += 1
            else:
                todo.append(card)
        self._resolve_batches(todo, result)
        # A CardId missing from an answer is "unknown" by contract, but a truncated answer
        # looks the same: ask once more for those before reporting them unknown.
        if result.unknown:
            first_pass = sorted(result.unknown)
            result.unknown = set()
            self._resolve_batches(first_pass, result)
        if self.cache:
            if refresh:
                for card in result.unknown:
                    self.cache.drop(card)
            try:
                self.cache.save()
            except OSError as exc:
                log.warning("could not save the resolver cache: %s", exc.strerror or exc)
        return result

    def _resolve_batches(self, todo: list[str], result: ResolveResult) -> None:
        size = self.cfg.batch_size
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            result.calls += 1
            try:
                answer = call_with_retries(
                    lambda b=batch: self._call(b),
                    max_attempts=self.cfg.max_attempts,
                    initial_delay=self.initial_delay,
                )
            except ConfigError:
                raise  # wrong set-up (e.g. TLS): stop the run, do not report per batch
            except Exception as exc:  # noqa: BLE001 - classified and reported per batch
                kind = classify(exc)
                reason = (
                    describe(exc)
                    if kind is not ErrorKind.TRANSIENT
                    else (f"{exc} (gave up after {self.cfg.max_attempts} attempts)")
                )
                log.warning("resolver batch of %d CardIds failed: %s", len(batch), reason)
                for card in batch:
                    result.failed[card] = reason
                continue
            result.failed.update(answer.faults)
            for card, guid in answer.guids.items():
                if guid is None:
                    result.unknown.add(card)
                else:
                    result.mapping[card] = guid
                    if self.cache:
                        self.cache.put(card, guid)
