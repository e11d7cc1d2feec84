"""Upload one batch of planned images: what the catalog and S3 already hold is left alone,
everything else is uploaded with checksums S3 verifies, then confirmed.

:mod:`pdata_sync.pipeline.triage` decides per image (trusted by the catalog, unchanged by the
listing, contradicted by the listing, or work to do). Work is read, checked to be DICOM,
hashed, recorded *pending* (BEGIN_UPLOAD), uploaded with checksums S3 verifies, then
confirmed by what S3 reports it stores (CONFIRM), or found already in S3 by content
comparison (MATCH). Uploads run concurrently on one shared boto3 client; each image's
outcome is returned as data. Catalog writes of the results are buffered
(:class:`SettleBuffer`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pdata_sync.archive.listing import RemoteObject, list_patients
from pdata_sync.archive.objects import head_metadata, head_sha256, stored_encryption
from pdata_sync.archive.retention import (
    Retention,
    lock_params,
    locked_until,
    of_header,
    rule_of,
)
from pdata_sync.archive.retired import copy_to_retired, retired_key, retirement_metadata
from pdata_sync.archive.thumbnails import ThumbnailError, make_thumbnail, too_large
from pdata_sync.archive.uploads import (
    MB,
    Stored,
    build_metadata,
    confirm_object,
    is_md5_etag,
    put_multipart,
    put_small,
)
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.cpu import CpuSlots
from pdata_sync.base.errors import (
    BadInputError,
    ErrorKind,
    PdataSyncError,
    PermanentError,
    SourceChangedError,
    classify,
    describe,
    s3_config_message,
)
from pdata_sync.catalog import (
    ACCEPT,
    CONFIRM,
    DRIFTED,
    MATCH,
    CatalogRow,
    ClinicImages,
    PendingItem,
    Settled,
    SourceInfo,
    now,
)
from pdata_sync.identity.keys import patient_prefix
from pdata_sync.identity.rules import names_other_folder
from pdata_sync.pipeline import progress
from pdata_sync.pipeline.plan import PlannedImage
from pdata_sync.pipeline.triage import (
    LENIENT,
    FileCheck,
    Triage,
    triage,
    trusted_keys,
    verified_unchanged,
)
from pdata_sync.source.dicom_meta import DicomHeader, file_digests, part_digests, read_header
from pdata_sync.source.pdata import patient_ids_on_share

log = logging.getLogger(__name__)

# what became of an image in this run (its catalog row then says verified, or why not)
UPLOADED = "uploaded"  # sent, and S3 confirmed what it stores: the row is verified
UNCHANGED = "unchanged"
REJECTED = "rejected"
FAILED = "failed"
LEFT = "left"  # not started: the run's window ended (transfer.stop_at); the next run goes on
LEFT_REASON = "not started: the run's window ended"

_STABLE_READ_TRIES = 3
# why an upload kept the object it replaced (retired/...; product-rules §3.5)
KEPT_IN_PLACE = "kept: the file's content changed in place (size and mtime unchanged)"
KEPT_CHANGED = "kept: replaced by the file's new content"
KEPT_DRIFT = "kept: S3 held other bytes at this key than were verified"
SETTLE_EVERY = 256  # catalog rows written per transaction while a batch runs
SOURCE_CHANGE_ATTEMPTS = 3
SOURCE_CHANGE_PAUSE = 0.5  # seconds, times the attempt number


@dataclass(frozen=True)
class Outcome:
    """What happened to one planned image."""

    status: str  # uploaded | unchanged | rejected | failed | left
    path: str
    key: str
    reason: str = ""
    bytes: int = 0
    fatal: bool = False  # the set-up is wrong (e.g. access denied): the run must stop
    trusted: bool = False  # unchanged by the catalog alone: S3 was not asked this run
    note: str = ""  # archived byte for byte, but worth telling (the file's defect)
    thumbnail: str = ""  # "made", or why no thumbnail was made; "" when none was tried
    header_id_empty: bool = False  # read this run, and its PatientID is empty or absent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _notes(*notes: str | None) -> str:
    """An outcome's notes, joined ("" when none)."""
    return "; ".join(n for n in notes if n)


def _read_stable(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a whole file, making sure it did not change while being read."""
    for _ in range(_STABLE_READ_TRIES):
        before = os.stat(path)
        with open(path, "rb") as fh:
            data = fh.read()
        after = os.stat(path)
        if (
            len(data) == after.st_size
            and before.st_size == after.st_size
            and before.st_mtime_ns == after.st_mtime_ns
        ):
            return data, after
    raise SourceChangedError("file keeps changing while being read (still being written?)")


T = TypeVar("T")
R = TypeVar("R")


def each_in_threads(fn: Callable[[T], R], items: Sequence[T], workers: int, name: str) -> list[R]:
    """``fn(item)`` for every item, in the items' order, run by ``workers`` threads that each
    take the next item until none is left.

    Not ThreadPoolExecutor.map: it makes a Future (with its Condition and lock) and a queue
    entry per item, which was 8% of the GIL time of a new worker's run over 20,000 files.
    The first exception ``fn`` raises stops the threads taking more items and is raised here
    once all of them have stopped.
    """
    results: list[Any] = [None] * len(items)
    failures: list[BaseException] = []
    lock = threading.Lock()
    taken = iter(range(len(items)))

    def work() -> None:
        while not failures:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            try:
                results[index] = fn(items[index])
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread
                failures.append(exc)

    threads = [
        threading.Thread(target=work, name=f"{name}_{n}")
        for n in range(max(1, min(workers, len(items))))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results


def compare_workers(config: ClinicConfig) -> int:
    """Threads of one batch for the images of which S3 holds an object of the same size:
    ``cpu_threads`` across the batches in flight, at most ``upload_concurrency``.

    Comparing is reading, hashing and a header scan, work for the CPU, not the network (the
    listing is done). Eight threads per batch on 2 cores only handed the GIL back and forth:
    a new worker's no-change run over 100,000 files made 1.1-1.2 million context switches
    and spent 15-18 s in the kernel; with one thread per core, 0.2 million and 9 s, and the
    run took 61 s instead of 67-77 s (bench/RESULTS.md). An image that turns out to differ
    is uploaded by the same thread."""
    per_batch = config.transfer.cpu_slots() // config.transfer.parallel_batches
    return max(1, min(config.transfer.upload_concurrency, per_batch))


def _compares(
    item: PlannedImage,
    listings: dict[str, dict[str, RemoteObject] | Exception],
    stats: dict[str, os.stat_result],
) -> bool:
    """S3 holds an object of ``item``'s key and its file's size: it will be compared."""
    listing = listings.get(item.patient_guid)
    found = listing.get(item.key) if isinstance(listing, dict) else None
    st = stats.get(item.key)
    return found is not None and st is not None and found.size == st.st_size


@dataclass
class _Batch:
    """One batch between its triage and its outcomes: the catalog's rows, the files'
    stats, the patients' listings, the triage, and why images could not be recorded."""

    rows: dict[str, CatalogRow]
    stats: dict[str, os.stat_result]
    listings: dict[str, dict[str, RemoteObject] | Exception]
    plan: Triage
    unrecorded: dict[str, str] = field(default_factory=dict)


class SettleBuffer:
    """Catalog records of a batch, written every :data:`SETTLE_EVERY` records and at the
    end of the batch (one transaction each). A crash before that leaves the rows *pending*:
    the next run compares contents and settles them without uploading again. Keys whose
    record could not be written are remembered with the reason."""

    def __init__(self, images: ClinicImages | None, flow_run_id: str | None):
        self.images = images
        self.flow_run_id = flow_run_id
        self._records: list[Settled] = []
        self._lock = threading.Lock()
        self.unrecorded: dict[str, str] = {}  # key -> why the catalog could not record it

    def add(self, record: Settled) -> None:
        if self.images is None:
            return
        with self._lock:
            self._records.append(record)
            full = len(self._records) >= SETTLE_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        if self.images is None:
            return
        with self._lock:
            records, self._records = self._records, []
        if not records:
            return
        try:
            self.images.settle(records, self.flow_run_id)
        except Exception as exc:  # noqa: BLE001 - those images are reported failed
            reason = f"in S3, but the catalog could not record it: {describe(exc)}"
            with self._lock:
                self.unrecorded.update({r.key: reason for r in records})


class BatchUploader:
    """Uploads planned images of one clinic with a shared S3 client."""

    def __init__(
        self,
        config: ClinicConfig,
        client: Any,
        images: ClinicImages | None = None,
        flow_run_id: str | None = None,
        check: FileCheck = LENIENT,
        deadline: datetime | None = None,
        cpu: CpuSlots | None = None,
    ):
        self.config = config
        # hashing, header reads and drawing take a slot (transfer.cpu_threads)
        self.cpu = cpu or CpuSlots(config.transfer.cpu_slots())
        self.deadline = deadline  # past it, no upload starts (transfer.stop_at)
        self.client = client
        self.images = images  # the clinic's rows in this destination
        self.flow_run_id = flow_run_id
        self.check = check  # what makes a file the verified one (a full run, changed files)
        self.root = Path(config.pdata_root)
        # a verified row confirmed by S3 since then is trusted without listing its prefix
        self.trusted_since: datetime | None = (
            now() - timedelta(days=config.transfer.recheck_days)
            if images is not None and config.transfer.recheck_days > 0
            else None
        )
        self.threshold = config.transfer.multipart_threshold_mb * MB
        self.part_size = config.transfer.part_size_mb * MB
        self.fatal: str | None = None  # first configuration error seen; stops the batch
        self.settled = SettleBuffer(images, flow_run_id)
        self._share_ids: frozenset[int] | None = None  # patient folders, read on a conflict
        # key -> (retired copy, why) of this run; the copy is "" when what S3 held there was
        # not the verified content (the history then claims no kept copy of it)
        self._kept: dict[str, tuple[str, str]] = {}

    def _same_content(self, remote: RemoteObject, etag: str, sha: str) -> bool:
        """True if the object has the content whose ETag / SHA-256 are given."""
        if is_md5_etag(remote.etag):
            if remote.etag == etag:
                return True
            if "-" not in remote.etag:
                return False  # a single-part MD5 ETag that differs: content differs
        # An ETag we cannot reproduce (other part size, SSE-KMS): compare the SHA-256
        # we stored in the object's metadata.
        return head_sha256(self.client, self.config.s3.bucket, remote.key) == sha

    def process(
        self, item: PlannedImage, remote: RemoteObject | None, row: CatalogRow | None = None
    ) -> Outcome:
        """Make sure ``item`` is in S3 with the file's current content, and verified.

        A file that changes while it is read or uploaded is tried again (it may be being
        written); if it keeps changing, :class:`SourceChangedError` is raised and nothing
        is stored.
        """
        for attempt in range(1, SOURCE_CHANGE_ATTEMPTS + 1):
            try:
                return self._process_once(item, remote, row)
            except SourceChangedError as exc:
                if attempt == SOURCE_CHANGE_ATTEMPTS:
                    raise SourceChangedError(
                        f"{exc} ({attempt} attempts); will be tried again next run"
                    ) from None
                time.sleep(SOURCE_CHANGE_PAUSE * attempt)
        raise AssertionError("unreachable")

    def _process_once(
        self, item: PlannedImage, remote: RemoteObject | None, row: CatalogRow | None
    ) -> Outcome:
        path = self.root / item.rel_path
        st = os.stat(path)
        size = st.st_size
        if size == 0:
            raise BadInputError("empty file")
        if verified_unchanged(item, row, remote, st, self.check):
            return Outcome(UNCHANGED, item.rel_path, item.key)  # not read again
        held: str | None = None  # the SHA-256 S3 is known to hold at the key
        if remote is not None and remote.size == size:
            source: bytes | Path = path
            if size <= self.threshold:  # read once for the digests and the header
                source = path.read_bytes()
                with self.cpu:
                    etag = hashlib.md5(source).hexdigest()
                    sha = hashlib.sha256(source).hexdigest()
            else:
                with self.cpu:
                    etag, sha = file_digests(path, size, self.threshold, self.part_size)
            same = self._same_content(remote, etag, sha)
            if same and self._stored_unencrypted(item, row):
                held = sha  # S3 holds these bytes: nothing to keep if they are what goes up
            elif same:
                with self.cpu:
                    header = read_header(source)
                self._check_header(item, header)
                if self.images is not None:
                    info = self._info(item, st, sha, header)
                    self.settled.add(Settled(item.key, info, MATCH, remote.etag))
                return Outcome(
                    UNCHANGED,
                    item.rel_path,
                    item.key,
                    note=header.defect or "",
                    header_id_empty=not header.patient_id,
                )
        if remote is not None and (row is None or row.sha256 is None):
            self._check_owner(item)  # about to replace an object this catalog never held
        if size <= self.threshold:
            return self._upload_small(item, path, row, remote is not None, held)
        return self._upload_multipart(item, path, row, remote is not None, held)

    def _keep_replaced(
        self, item: PlannedImage, row: CatalogRow | None, st: os.stat_result, sha: str
    ) -> str:
        """Before an upload replaces the object at ``item.key``, copy it to ``retired/``
        (kept, with why): pdata-sync never overwrites an X-ray without keeping the bytes it
        replaces (product-rules §3.5). Returns the run's note for the image: "" unless the
        file changed in place (size and mtime kept), which is worth telling. Once per key
        and run (a retry after the file changed mid-upload does not copy our own upload)."""
        if item.key in self._kept:
            return self._kept_note(item.key)
        at = now()
        if row is not None and row.sha256 == sha:
            why = KEPT_DRIFT
        elif row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
            why = KEPT_IN_PLACE
        else:
            why = KEPT_CHANGED
        target = retired_key(self.config.clinic_id, item.key, at)
        held = row.etag.strip('"') if row is not None and row.etag else None

        def reason(etag: str) -> str:
            # the copy is the archived content only if S3 still held the verified bytes;
            # bytes changed behind our back are kept all the same, but are not that content
            return why if held is None or etag == held else KEPT_DRIFT

        kept = copy_to_retired(
            self.client,
            self.config.s3.bucket,
            item.key,
            target,
            lambda etag: retirement_metadata(reason(etag), at, self.flow_run_id, item.key),
        )
        if kept is not None:
            same = held is None or kept == held
            self._kept[item.key] = (target if same else "", reason(kept))
        return self._kept_note(item.key)

    def _kept_note(self, key: str) -> str:
        target, why = self._kept.get(key, ("", ""))
        return f"{why}; the old version is kept at {target}" if why == KEPT_IN_PLACE else ""

    def _stored_unencrypted(self, item: PlannedImage, row: CatalogRow | None) -> bool:
        """A drifted row whose object holds the right bytes may have been found by verify
        stored without the configured encryption (docs/protecting-the-archive.md): then
        the same bytes are uploaded again, encrypted (S3 servers differ on copying an
        object onto itself; SeaweedFS refuses it). Asked of drifted rows only: every
        write of pdata-sync asks for the encryption."""
        algorithm = self.config.s3.server_side_encryption
        if algorithm is None or row is None or row.state != DRIFTED:
            return False
        return stored_encryption(self.client, self.config.s3.bucket, item.key) != algorithm

    def _check_owner(self, item: PlannedImage) -> None:
        """Raise :class:`PermanentError` unless the object S3 holds at ``item.key`` is this
        clinic's image ``item.image_id`` by its own metadata: a key is one image's, and an
        object another clinic (sharing the bucket, with another template) or another tool
        wrote there is never overwritten (product-rules §3.1)."""
        meta = head_metadata(self.client, self.config.s3.bucket, item.key)
        owner = (meta.get("clinic-id"), meta.get("image-id"))
        if owner == (self.config.clinic_id, str(item.image_id)):
            return
        if owner == (None, None):
            holder = "an object pdata-sync did not write (no clinic-id, image-id metadata)"
        else:
            holder = f"image {owner[1]} of clinic {owner[0]}"
        raise PermanentError(f"key conflict: S3 holds {holder} at this key; not overwritten")

    def _check_header(self, item: PlannedImage, header: DicomHeader) -> None:
        """Raise :class:`PermanentError` when the file's own PatientID names another patient
        than its folder (docs/product-rules.md §10): never archived under this patientGuid."""
        if item.header is None:
            return
        why = item.header.conflict(header.patient_id)
        if why is None:
            return
        if self._share_ids is None:
            self._share_ids = patient_ids_on_share(self.root)
        other = names_other_folder(header.patient_id, self._share_ids)
        if other is not None:
            why += f"; it names Sidexis patient {other}, who has a folder"
        raise PermanentError(why)

    def _upload_small(
        self,
        item: PlannedImage,
        path: Path,
        row: CatalogRow | None,
        replaces: bool,
        held: str | None = None,
    ) -> Outcome:
        data, st = _read_stable(path)
        with self.cpu:
            digest = hashlib.sha256(data).digest()
            header = read_header(data)
        self._check_header(item, header)
        retention = self._retention(header)
        lock = self._lock(retention)
        info = self._info(item, st, digest.hex(), header, lock)
        replaces = replaces and info.sha256 != held  # the same bytes again: nothing to keep
        kept = self._keep_replaced(item, row, st, info.sha256) if replaces else ""
        stored = put_small(
            self.client,
            self.config.s3.bucket,
            item.key,
            data,
            self._metadata(item, info),
            sha256_digest=digest,
            lock=lock,
        )
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            # what we stored was read from a file that was still being written:
            # try again (the new upload replaces it); the row stays pending
            raise SourceChangedError("file changed while it was being uploaded")
        self._confirm(item, info, stored)
        return Outcome(
            UPLOADED,
            item.rel_path,
            item.key,
            bytes=len(data),
            note=_notes(info.header.defect, kept, retention and retention.note(now().date())),
            thumbnail=self._thumbnail(item, lambda: data, info.sha256, len(data), lock),
            header_id_empty=not header.patient_id,
        )

    def _upload_multipart(
        self,
        item: PlannedImage,
        path: Path,
        row: CatalogRow | None,
        replaces: bool,
        held: str | None = None,
    ) -> Outcome:
        with self.cpu:
            header = read_header(path)
        self._check_header(item, header)
        before = os.stat(path)
        with self.cpu:
            sha, digests = part_digests(path, self.part_size)
        retention = self._retention(header)
        lock = self._lock(retention)
        info = self._info(item, before, sha, header, lock)
        replaces = replaces and sha != held  # the same bytes again: nothing to keep
        kept = self._keep_replaced(item, row, before, sha) if replaces else ""
        stored = put_multipart(
            self.client,
            self.config.s3.bucket,
            item.key,
            path,
            part_size=self.part_size,
            expected_size=before.st_size,
            expected_mtime_ns=before.st_mtime_ns,
            metadata=self._metadata(item, info),
            digests=digests,
            lock=lock,
        )
        self._confirm(item, info, stored)
        return Outcome(
            UPLOADED,
            item.rel_path,
            item.key,
            bytes=before.st_size,
            note=_notes(header.defect, kept, retention and retention.note(now().date())),
            thumbnail=self._thumbnail(item, path.read_bytes, info.sha256, before.st_size, lock),
            header_id_empty=not header.patient_id,
        )

    def _thumbnail(
        self,
        item: PlannedImage,
        read: Callable[[], bytes],
        sha: str,
        size: int,
        lock: dict[str, Any] | None = None,
    ) -> str:
        """Make the verified image's thumbnail from ``read()`` (locked with the image's
        ``lock``): "made", or why not ("" when switched off). Never raises: the image is
        archived whatever happens here."""
        if not self.config.thumbnails:
            return ""
        if reason := too_large(size):
            return reason
        try:
            make_thumbnail(
                self.client, self.config.s3.bucket, item.key, read(), sha, self.cpu, lock
            )
        except ThumbnailError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - never the image's failure
            return f"thumbnail not made: {describe(exc)}"
        return "made"

    def _retention(self, header: DicomHeader) -> Retention | None:
        """Until when the version about to be written is locked (s3.object_lock; None: no
        lock), from the header's dates and today (docs/adr/0017-retention-rule.md)."""
        lock = self.config.s3.object_lock
        if lock is None:
            return None
        return of_header(rule_of(lock), header.dates, now().date())

    def _lock(self, retention: Retention | None) -> dict[str, Any] | None:
        """The Object Lock request parameters of ``retention`` (None: no lock, or the
        retention period has already ended: S3 refuses a date in the past, and the law
        asks nothing more; the image's note says so)."""
        lock = self.config.s3.object_lock
        if lock is None or retention is None or retention.ended(now().date()):
            return None
        return lock_params(lock.mode, retention.until)

    def _info(
        self,
        item: PlannedImage,
        st: os.stat_result,
        sha: str,
        header: DicomHeader,
        lock: dict[str, Any] | None = None,
    ) -> SourceInfo:
        return SourceInfo(
            rel_path=item.rel_path,
            image_id=item.image_id,
            patient_guid=item.patient_guid,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            sha256=sha,
            header=header,
            image_name=item.image_name,
            ctime_ns=st.st_ctime_ns,
            inode=st.st_ino,
            retain_until=locked_until(lock),  # the date the version written now carries
        )

    def _confirm(self, item: PlannedImage, info: SourceInfo, stored: Stored) -> None:
        """S3 accepted the body: ask S3 what it stores, and only then mark it verified.

        If S3 does not confirm, the row is recorded *uploaded* (ACCEPT) and the image
        fails: what S3 holds is not proven."""
        accepted_at = now()
        kept_at = self._kept.get(item.key, ("", ""))[0] or None
        try:
            etag = confirm_object(self.client, self.config.s3.bucket, item.key, stored)
        except Exception as exc:
            self.settled.add(Settled(item.key, info, ACCEPT, stored.etag, accepted_at, kept_at))
            if classify(exc) is ErrorKind.CONFIG or isinstance(exc, PermanentError):
                raise
            raise PermanentError(
                f"uploaded, but S3 did not confirm what it stores ({describe(exc)}); not verified"
            ) from None
        self.settled.add(Settled(item.key, info, CONFIRM, etag, accepted_at, kept_at))

    def flush(self) -> None:
        """Write the buffered catalog records (one transaction)."""
        self.settled.flush()

    def _metadata(self, item: PlannedImage, info: SourceInfo) -> dict[str, str]:
        return build_metadata(
            clinic_id=self.config.clinic_id,
            image_id=item.image_id,
            image_name=item.image_name,
            sha256_hex=info.sha256,
            header=info.header,
            rel_path=info.rel_path,
        )

    def _safe_process(
        self, item: PlannedImage, remote: RemoteObject | None, row: CatalogRow | None
    ) -> Outcome:
        try:
            return self.process(item, remote, row)
        except Exception as exc:  # noqa: BLE001 - every error becomes this image's outcome
            return self._outcome_of(item, exc)

    def _outcome_of(self, item: PlannedImage, exc: BaseException) -> Outcome:
        kind = classify(exc)
        if kind is ErrorKind.BAD_INPUT:
            reason = str(exc) if isinstance(exc, BadInputError) else describe(exc)
            return Outcome(REJECTED, item.rel_path, item.key, reason=reason)
        if kind is ErrorKind.CONFIG:
            self.fatal = self.fatal or s3_config_message(exc, self.config.s3.bucket)
            return Outcome(FAILED, item.rel_path, item.key, reason=self.fatal, fatal=True)
        if kind is ErrorKind.ENVIRONMENT:
            reason = f"cannot read the file: {describe(exc)}"
            return Outcome(FAILED, item.rel_path, item.key, reason=reason)
        # our own errors are written for the operator; anything else says what it was
        reason = str(exc) if isinstance(exc, PdataSyncError) and str(exc) else describe(exc)
        return Outcome(FAILED, item.rel_path, item.key, reason=reason)

    def _failed_all(self, items: list[PlannedImage], reason: str, fatal: bool) -> list[Outcome]:
        progress.advance(len(items))
        return [Outcome(FAILED, i.rel_path, i.key, reason=reason, fatal=fatal) for i in items]

    def upload_batch(self, items: list[PlannedImage]) -> list[Outcome]:
        """Process ``items``: skip what the catalog vouches for, list the prefix of every
        other patient once, record contradictions, record what needs work as *pending*
        (one transaction), then upload concurrently."""
        rows: dict[str, CatalogRow] = {}
        if self.images is not None:
            try:
                rows = self.images.lookup([i.key for i in items])
            except Exception as exc:  # noqa: BLE001 - the environment: stop the run
                self.fatal = f"catalog: cannot read the rows of this batch: {describe(exc)}"
                return self._failed_all(items, self.fatal, fatal=True)
        batch = self._triage(items, rows)
        work = self._begin(batch)
        # only images with work to do go to threads (a no-change batch needs none)
        progress.advance(len(items) - len(work))
        done = self._work(batch, work)
        outcomes = [done[i.key] if i.key in done else self._settled(batch, i) for i in items]
        self._release_rejected(outcomes)
        lost = self.settled.unrecorded
        return [
            Outcome(FAILED, o.path, o.key, reason=lost[o.key])
            if o.key in lost and o.status != FAILED
            else o
            for o in outcomes
        ]

    def _triage(self, items: list[PlannedImage], rows: dict[str, CatalogRow]) -> _Batch:
        """What each image needs: trusted by the catalog, or compared with a listing of
        its patient's prefix (each listed once), and the other archived rows of those
        patients (an unplanned row is not this batch's to judge without them)."""
        stats: dict[str, os.stat_result] = {}
        for item in items:
            with contextlib.suppress(OSError):  # reported by process()
                stats[item.key] = os.stat(self.root / item.rel_path)
        trusted = trusted_keys(items, rows, stats, self.trusted_since, self.check)
        guids = list(dict.fromkeys(i.patient_guid for i in items if i.key not in trusted))
        listings = list_patients(
            self.client, self.config.s3.bucket, guids, self.config.transfer.upload_concurrency
        )
        others: dict[str, CatalogRow] = {}
        if self.images is not None and guids:
            try:
                others = self.images.verified_of_patients(guids)
            except Exception as exc:  # noqa: BLE001 - unplanned rows wait for verify
                log.warning(
                    "catalog: cannot read the other rows of this batch's patients: %s",
                    describe(exc),
                )
        plan = triage(items, rows, stats, trusted, listings, others, self.check)
        return _Batch(rows, stats, listings, plan)

    def _begin(self, batch: _Batch) -> list[PlannedImage]:
        """Record what the listing confirmed or contradicted, then the images with work to
        do as *pending* (one transaction); returns those. What the catalog cannot record
        is not uploaded (``batch.unrecorded`` says why)."""
        plan = batch.plan
        if self.images is None:
            return list(plan.work)
        if plan.unchanged:
            try:
                self.images.reconfirm(sorted(plan.unchanged), self.flow_run_id)
            except Exception as exc:  # noqa: BLE001 - only the trust window is not renewed
                log.warning(
                    "catalog: could not record %d confirmation(s): %s",
                    len(plan.unchanged),
                    describe(exc),
                )
        if plan.contradicted:
            try:
                self.images.contradict(sorted(plan.contradicted), self.flow_run_id)
            except Exception as exc:  # noqa: BLE001 - not uploaded unrecorded
                reason = f"not uploaded: the catalog cannot record its drift: {describe(exc)}"
                batch.unrecorded.update(dict.fromkeys(plan.contradicted, reason))
        work = [i for i in plan.work if i.key not in batch.unrecorded]
        pending = [PendingItem(i.key, i.rel_path, i.image_id, i.patient_guid) for i in work]
        try:
            batch.unrecorded.update(self.images.begin_upload(pending, self.flow_run_id))
        except Exception as exc:  # noqa: BLE001 - nothing is uploaded unrecorded
            reason = f"not uploaded: the catalog cannot record it: {describe(exc)}"
            batch.unrecorded.update(dict.fromkeys((i.key for i in work), reason))
        return [i for i in work if i.key not in batch.unrecorded]

    def _settled(self, batch: _Batch, item: PlannedImage) -> Outcome:
        """An image's outcome: settled without S3 when nothing is to be done or nothing can
        be (:meth:`_without_upload`), else compared with its object or uploaded."""
        outcome = self._without_upload(batch, item)
        if outcome is not None:
            return outcome
        listing = batch.listings[item.patient_guid]
        assert not isinstance(listing, Exception)
        return self._safe_process(item, listing.get(item.key), batch.rows.get(item.key))

    def _without_upload(self, batch: _Batch, item: PlannedImage) -> Outcome | None:
        """The outcome of an image that is not compared or uploaded: trusted, confirmed by
        the listing, not recorded, the run stopped, or its patient's listing failed."""
        plan, path, key = batch.plan, item.rel_path, item.key
        if key in plan.trusted:
            return Outcome(UNCHANGED, path, key, trusted=True)
        if key in plan.unchanged:
            return Outcome(UNCHANGED, path, key)  # not read again
        if key in batch.unrecorded:
            return Outcome(FAILED, path, key, reason=batch.unrecorded[key])
        if self.fatal:
            return Outcome(FAILED, path, key, reason=f"not attempted: {self.fatal}", fatal=True)
        if self.deadline is not None and now() >= self.deadline:
            st = batch.stats.get(key)
            return Outcome(LEFT, path, key, reason=LEFT_REASON, bytes=st.st_size if st else 0)
        if key in plan.unlisted:
            listing = plan.unlisted[key]
            if classify(listing) is ErrorKind.CONFIG:
                self.fatal = self.fatal or s3_config_message(listing, self.config.s3.bucket)
                return Outcome(FAILED, path, key, reason=self.fatal, fatal=True)
            reason = f"cannot list {patient_prefix(item.patient_guid)}: {describe(listing)}"
            return Outcome(FAILED, path, key, reason=reason)
        return None

    def _work(self, batch: _Batch, work: list[PlannedImage]) -> dict[str, Outcome]:
        """Compare or upload the images with work to do, on threads: those whose object
        may already hold the file are compared first (reading the file), the rest
        uploaded; the catalog is written once at the end."""

        def run_and_report(item: PlannedImage) -> Outcome:
            outcome = self._settled(batch, item)
            progress.advance(1, outcome.bytes if outcome.status == UPLOADED else 0)
            return outcome

        done: dict[str, Outcome] = {}
        to_compare: list[PlannedImage] = []
        to_upload: list[PlannedImage] = []
        for i in work:
            (to_compare if _compares(i, batch.listings, batch.stats) else to_upload).append(i)
        try:
            for part, workers, name in (
                (to_compare, compare_workers(self.config), "pdata-compare"),
                (to_upload, self.config.transfer.upload_concurrency, "pdata-upload"),
            ):
                if part:
                    results = each_in_threads(run_and_report, part, workers, name)
                    done.update({i.key: o for i, o in zip(part, results, strict=True)})
        finally:
            self.flush()
        return done

    def _release_rejected(self, outcomes: list[Outcome]) -> None:
        """Bad input, or not started before the window ended: the pending row gets back the
        state it had (a drifted row stays drifted)."""
        rejected = [o.key for o in outcomes if o.status in (REJECTED, LEFT)]
        if self.images is not None and rejected:
            try:
                self.images.release(rejected, self.flow_run_id)
            except Exception:  # noqa: BLE001 - a stale pending row is redone next run
                log.warning("catalog: could not release %d pending row(s)", len(rejected))
