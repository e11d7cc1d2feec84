"""Store one batch's images in Orthanc, after S3 (docs/orthanc.md).

Only images whose S3 copy is *verified* go to Orthanc, with exactly the bytes S3 verified:
the PDATA file when its SHA-256 is still the verified one, else the S3 object itself. An
image the catalog records as held by Orthanc with that same content is not sent again (a
re-run with nothing new makes no Orthanc call for it). Orthanc's answer is recorded per
image; a failure here never undoes the S3 copy: the image is *failed for Orthanc only* and
the next run tries again. Once Orthanc stops answering (retries exhausted), the rest of the
batch is not attempted, so a server that is down costs one image's retries, not a batch's.

Orthanc keeps the first file it was given for a SOP Instance UID and answers
``AlreadyStored`` to any other content under that UID (a file Sidexis saved again, edited in
place). So an ``AlreadyStored`` is recorded only once the file Orthanc gives back has the
content just sent. When it has other content that pdata-sync itself stored there for this
image (the catalog's row names that instance), that earlier content is deleted and the
current one stored; other content no row of this image accounts for is not pdata-sync's to
replace: the image is reported rejected for Orthanc, with that reason.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pdata_sync.base.errors import ErrorKind, PermanentError, classify, describe
from pdata_sync.catalog import VERIFIED, ClinicImages, now
from pdata_sync.catalog.orthanc import (
    ALREADY_STORED,
    HELD,
    MISSING,
    REJECTED,
    STORED,
    OrthancRecords,
    OrthancRow,
)
from pdata_sync.orthanc.client import SUCCESS, OrthancClient, OrthancInstance, OrthancRejected
from pdata_sync.source.pdata import read_if_unchanged

OTHER_CONTENT = (
    "Orthanc holds other content under this image's SOP Instance UID, which pdata-sync did "
    "not store for this image: not replaced"
)

# what became of an image in Orthanc
O_STORED = "stored"
O_ALREADY_STORED = "already_stored"
O_UNCHANGED = "unchanged"  # recorded as held with this content: not sent
O_REJECTED = "rejected"
O_FAILED = "failed"


@dataclass(frozen=True)
class OrthancOutcome:
    key: str
    path: str
    status: str
    reason: str = ""


@dataclass(frozen=True)
class Verified:
    """An image whose S3 copy is verified: its key, PDATA path and content hash."""

    key: str
    rel_path: str
    sha256: str


def verified_in_s3(images: ClinicImages, keys: Sequence[str]) -> list[Verified]:
    """The keys among ``keys`` whose catalog row is verified, with their content hash."""
    rows = images.lookup(list(keys))
    return [
        Verified(r.key, r.rel_path, r.sha256)
        for k in keys
        if (r := rows.get(k)) is not None and r.state is VERIFIED and r.sha256
    ]


class OrthancBatch:
    """Sends the images of one batch to one Orthanc and records the answers."""

    def __init__(
        self,
        client: OrthancClient | None,
        records: OrthancRecords,
        root: Path,
        read_s3: Callable[[str], bytes],
        flow_run_id: str | None = None,
        down: str | None = None,
    ):
        self.client = client  # None only with ``down``: nothing is sent
        self.records = records
        self.root = root
        self.read_s3 = read_s3
        self.flow_run_id = flow_run_id
        self._down: str | None = down  # why Orthanc is given up on for this batch
        self._lock = threading.Lock()

    def _content(self, image: Verified) -> bytes:
        """The verified bytes: the PDATA file if unchanged since, else the S3 object."""
        data = read_if_unchanged(self.root / image.rel_path, image.sha256)
        if data is not None:
            return data
        data = self.read_s3(image.key)
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise ValueError("neither the file nor the S3 object has the verified content")
        return data

    def _holds(self, answer: OrthancInstance, sha256: str) -> bool:
        """Whether the instance Orthanc answered with holds exactly the content whose
        SHA-256 (hex) is ``sha256``."""
        if answer.status == SUCCESS:
            return True
        assert self.client is not None
        held = self.client.file(answer.instance_id)
        return held is not None and hashlib.sha256(held).hexdigest() == sha256

    def _store(
        self, data: bytes, sha256: str, earlier: OrthancRow | None, deleted: list[str]
    ) -> OrthancInstance:
        """Store ``data`` (its SHA-256: ``sha256``, checked by :meth:`_content`) so that
        Orthanc holds exactly it (see the module's docstring); the id of an instance
        deleted on the way goes into ``deleted``."""
        assert self.client is not None
        answer = self.client.store(data)
        if self._holds(answer, sha256):
            return answer
        if earlier is None or earlier.instance_id != answer.instance_id:
            raise OrthancRejected(OTHER_CONTENT)
        if self.client.delete(answer.instance_id):  # our own earlier content of this image
            deleted.append(answer.instance_id)
        answer = self.client.store(data)
        if not self._holds(answer, sha256):
            raise PermanentError("Orthanc kept other content under this SOP Instance UID")
        return answer

    def _send(
        self, image: Verified, earlier: OrthancRow | None
    ) -> tuple[OrthancOutcome, OrthancRow | None]:
        """One image to Orthanc: its outcome, and the row to record (None: nothing
        changes in the catalog)."""
        if self._down:
            return OrthancOutcome(
                image.key, image.rel_path, O_FAILED, f"not attempted: {self._down}"
            ), None
        try:
            data = self._content(image)
        except Exception as exc:  # noqa: BLE001 - S3 unreadable or content not the verified one
            reason = f"not sent: {exc if isinstance(exc, ValueError) else describe(exc)}"
            return OrthancOutcome(image.key, image.rel_path, O_FAILED, reason), None
        deleted: list[str] = []
        try:
            answer = self._store(data, image.sha256, earlier, deleted)
        except Exception as exc:  # noqa: BLE001 - every error becomes this image's outcome
            kind = classify(exc)
            if kind is ErrorKind.BAD_INPUT:
                reason = str(exc)[:300]
                refused = OrthancRow(
                    image.key, image.sha256, None, None, None, None, REJECTED, now(), reason
                )
                return OrthancOutcome(image.key, image.rel_path, O_REJECTED, reason), refused
            reason = str(exc) if kind is ErrorKind.CONFIG else f"Orthanc: {describe(exc)}"
            if kind in (ErrorKind.TRANSIENT, ErrorKind.CONFIG):
                with self._lock:
                    self._down = self._down or reason
            gone = None
            if deleted and earlier is not None:  # the earlier content is no longer there
                gone = OrthancRow(image.key, earlier.sha256, None, None, None, None, MISSING, now())
            return OrthancOutcome(image.key, image.rel_path, O_FAILED, reason), gone
        status = STORED if answer.status == SUCCESS else ALREADY_STORED
        row = OrthancRow(
            key=image.key,
            sha256=image.sha256,
            instance_id=answer.instance_id,
            series_id=answer.series_id,
            study_id=answer.study_id,
            patient_id=answer.patient_id,
            status=status,
            stored_at=now(),
        )
        outcome = O_STORED if status == STORED else O_ALREADY_STORED
        return OrthancOutcome(image.key, image.rel_path, outcome), row

    def store(
        self, images: Sequence[Verified], concurrency: int, retry_rejected: bool = False
    ) -> list[OrthancOutcome]:
        """Send what Orthanc does not hold yet; one outcome per image, in order. Content
        Orthanc rejected before is reported rejected again without a call, unless
        ``retry_rejected`` (a full run)."""
        try:
            known = self.records.lookup([i.key for i in images])
        except Exception as exc:  # noqa: BLE001 - without the record, nothing is sent
            reason = f"catalog: cannot read what Orthanc holds: {describe(exc)}"
            return [OrthancOutcome(i.key, i.rel_path, O_FAILED, reason) for i in images]
        done: dict[str, OrthancOutcome] = {}
        todo: list[Verified] = []
        for image in images:
            row = known.get(image.key)
            same = row is not None and row.sha256 == image.sha256
            if same and row.status in HELD:
                done[image.key] = OrthancOutcome(image.key, image.rel_path, O_UNCHANGED)
            elif same and row.status == REJECTED and not retry_rejected:
                reason = f"{row.reason} (on {row.stored_at:%Y-%m-%d}; not sent again)"
                done[image.key] = OrthancOutcome(image.key, image.rel_path, O_REJECTED, reason)
            else:
                todo.append(image)
        rows: list[OrthancRow] = []
        if todo:
            with ThreadPoolExecutor(
                min(concurrency, len(todo)), thread_name_prefix="pdata-orthanc"
            ) as pool:
                sent = pool.map(lambda i: self._send(i, known.get(i.key)), todo)
                for outcome, row in sent:
                    done[outcome.key] = outcome
                    if row is not None:
                        rows.append(row)
        try:
            self.records.record(rows, self.flow_run_id)
        except Exception as exc:  # noqa: BLE001 - stored, but unrecorded: sent again next run
            reason = f"Orthanc answered, but the catalog could not record it: {describe(exc)}"
            for row in rows:
                done[row.key] = OrthancOutcome(row.key, done[row.key].path, O_FAILED, reason)
        return [done[i.key] for i in images]
