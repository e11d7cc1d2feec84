"""Upload one batch of planned images: compare with S3, upload what is new or changed.

Per batch, the catalog rows of the batch are read in one query. An image is *unchanged*
without asking S3 or reading the file when its catalog row is verified with the same path,
size and mtime and S3 confirmed it within ``transfer.recheck_days`` (docs/adr/0005). The
S3 prefix of every other patient of the batch is listed once: an image is unchanged without
reading the file when its verified row matches the file and the listing shows the verified
size and ETag (the row's ``checked_at`` is renewed); without a row (a new worker), when the
object has the size and ETag its bytes would produce.
Everything else is read, checked to be DICOM, hashed, recorded *pending*, uploaded with
checksums S3 verifies (*uploaded*), then confirmed by asking S3 for the size and checksum it
stores (*verified*). Uploads run concurrently on one shared boto3 client; each image's
outcome is returned as data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import progress
from .catalog import UPLOADED as ROW_UPLOADED
from .catalog import VERIFIED, Catalog, CatalogRow, PendingItem, Settled, SourceInfo, now
from .config import ClinicConfig
from .dicom_meta import DicomHeader, file_digests, part_digests, read_header
from .errors import BadInputError, ErrorKind, SourceChangedError, classify, describe
from .keys import patient_prefix
from .plan import PlannedImage
from .s3_store import (
    MB,
    RemoteObject,
    Stored,
    build_metadata,
    confirm_object,
    head_sha256,
    is_md5_etag,
    list_patients,
    put_multipart,
    put_small,
)

log = logging.getLogger(__name__)

UPLOADED = "uploaded"
UNCHANGED = "unchanged"
REJECTED = "rejected"
FAILED = "failed"

_STABLE_READ_TRIES = 3
SETTLE_EVERY = 64  # catalog rows written per transaction while a batch runs
SOURCE_CHANGE_ATTEMPTS = 3
SOURCE_CHANGE_PAUSE = 0.5  # seconds, times the attempt number


@dataclass(frozen=True)
class Outcome:
    """What happened to one planned image."""

    status: str  # uploaded | unchanged | rejected | failed
    path: str
    key: str
    reason: str = ""
    bytes: int = 0
    fatal: bool = False  # the set-up is wrong (e.g. access denied): the run must stop
    trusted: bool = False  # unchanged by the catalog alone: S3 was not asked this run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def config_error_message(exc: BaseException, bucket: str) -> str:
    """One line for an S3 error that means the set-up is wrong."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return (
            f"S3: access denied writing to bucket {bucket!r}: the credentials need "
            "s3:PutObject and s3:ListBucket on images/*"
        )
    if code in ("NoSuchBucket", "404"):
        return f"S3: bucket {bucket!r} does not exist (s3.bucket)"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"S3: the AWS credentials were refused by bucket {bucket!r} ({code})"
    return f"S3: {describe(exc)}"


class BatchUploader:
    """Uploads planned images of one clinic with a shared S3 client."""

    def __init__(
        self,
        config: ClinicConfig,
        client: Any,
        catalog: Catalog | None = None,
        flow_run_id: str | None = None,
    ):
        self.config = config
        self.client = client
        self.catalog = catalog
        self.flow_run_id = flow_run_id
        self.root = Path(config.pdata_root)
        # a verified row confirmed by S3 since then is trusted without listing its prefix
        self.trusted_since: datetime | None = (
            now() - timedelta(days=config.transfer.recheck_days)
            if catalog is not None and config.transfer.recheck_days > 0
            else None
        )
        self.threshold = config.transfer.multipart_threshold_mb * MB
        self.part_size = config.transfer.part_size_mb * MB
        self.fatal: str | None = None  # first configuration error seen; stops the batch
        self._settled: list[Settled] = []
        self._settled_lock = threading.Lock()
        self._unrecorded: dict[str, str] = {}  # key -> why the catalog could not record it

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
        if verified_unchanged(item, row, remote, st):
            return Outcome(UNCHANGED, item.rel_path, item.key)  # not read again
        if remote is not None and remote.size == size:
            etag, sha = file_digests(path, size, self.threshold, self.part_size)
            if self._same_content(remote, etag, sha):
                if self.catalog is not None:
                    info = self._info(item, size, st.st_mtime_ns, sha, read_header(path))
                    t = now()
                    self._settle(Settled(item.key, info, VERIFIED, remote.etag, None, t))
                return Outcome(UNCHANGED, item.rel_path, item.key)
        if size <= self.threshold:
            return self._upload_small(item, path)
        return self._upload_multipart(item, path)

    def _upload_small(self, item: PlannedImage, path: Path) -> Outcome:
        data, st = _read_stable(path)
        digest = hashlib.sha256(data).digest()
        info = self._info(item, st.st_size, st.st_mtime_ns, digest.hex(), read_header(data))
        stored = put_small(
            self.client,
            self.config.s3.bucket,
            item.key,
            data,
            self._metadata(item, info),
            sha256_digest=digest,
        )
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            # what we stored was read from a file that was still being written:
            # try again (the new upload replaces it); the row stays pending
            raise SourceChangedError("file changed while it was being uploaded")
        self._confirm(item, info, stored)
        return Outcome(UPLOADED, item.rel_path, item.key, bytes=len(data))

    def _upload_multipart(self, item: PlannedImage, path: Path) -> Outcome:
        header = read_header(path)
        before = os.stat(path)
        sha, digests = part_digests(path, self.part_size)
        info = self._info(item, before.st_size, before.st_mtime_ns, sha, header)
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
        )
        self._confirm(item, info, stored)
        return Outcome(UPLOADED, item.rel_path, item.key, bytes=before.st_size)

    def _info(
        self, item: PlannedImage, size: int, mtime_ns: int, sha: str, header: DicomHeader
    ) -> SourceInfo:
        return SourceInfo(
            rel_path=item.rel_path,
            image_id=item.image_id,
            patient_guid=item.patient_guid,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha,
            header=header,
        )

    def _confirm(self, item: PlannedImage, info: SourceInfo, stored: Stored) -> None:
        """S3 accepted the body: ask S3 what it stores, and only then mark it verified.

        If S3 does not confirm, the row is recorded *uploaded* and the error propagates."""
        accepted_at = now()
        try:
            etag = confirm_object(self.client, self.config.s3.bucket, item.key, stored)
        except Exception:
            self._settle(Settled(item.key, info, ROW_UPLOADED, stored.etag, accepted_at, None))
            raise
        self._settle(Settled(item.key, info, VERIFIED, etag, accepted_at, now()))

    def _settle(self, record: Settled) -> None:
        """Queue a catalog record; written every :data:`SETTLE_EVERY` records and at the end
        of the batch. A crash before that leaves the rows *pending*: the next run compares
        contents and settles them without uploading again."""
        if self.catalog is None:
            return
        with self._settled_lock:
            self._settled.append(record)
            full = len(self._settled) >= SETTLE_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the queued catalog records (one transaction)."""
        if self.catalog is None:
            return
        with self._settled_lock:
            records, self._settled = self._settled, []
        if not records:
            return
        try:
            self.catalog.settle(self.config.clinic_id, records, self.flow_run_id)
        except Exception as exc:  # noqa: BLE001 - those images are reported failed
            reason = f"in S3, but the catalog could not record it: {describe(exc)}"
            with self._settled_lock:
                self._unrecorded.update({r.key: reason for r in records})

    def _metadata(self, item: PlannedImage, info: SourceInfo) -> dict[str, str]:
        return build_metadata(
            clinic_id=self.config.clinic_id,
            image_id=item.image_id,
            image_name=item.image_name,
            sha256_hex=info.sha256,
            header=info.header,
        )

    def _safe_process(
        self, item: PlannedImage, remote: RemoteObject | None, row: CatalogRow | None
    ) -> Outcome:
        try:
            return self.process(item, remote, row)
        except Exception as exc:  # noqa: BLE001 - every error becomes this image's outcome
            kind = classify(exc)
            if kind is ErrorKind.BAD_INPUT:
                reason = str(exc) if isinstance(exc, BadInputError) else describe(exc)
                return Outcome(REJECTED, item.rel_path, item.key, reason=reason)
            if kind is ErrorKind.CONFIG:
                self.fatal = self.fatal or config_error_message(exc, self.config.s3.bucket)
                return Outcome(FAILED, item.rel_path, item.key, reason=self.fatal, fatal=True)
            return Outcome(FAILED, item.rel_path, item.key, reason=describe(exc))

    def upload_batch(self, items: list[PlannedImage]) -> list[Outcome]:
        """Process ``items``: skip what the catalog vouches for, list the prefix of every
        other patient once, record what is not verified and unchanged as *pending* (one
        transaction), then upload concurrently."""
        rows: dict[str, CatalogRow] = {}
        if self.catalog is not None:
            rows = self.catalog.lookup(self.config.clinic_id, [i.key for i in items])
        stats: dict[str, os.stat_result] = {}
        for item in items:
            with contextlib.suppress(OSError):  # reported by process()
                stats[item.key] = os.stat(self.root / item.rel_path)
        trusted = {
            i.key
            for i in items
            if i.key in stats
            and trusted_unchanged(i, rows.get(i.key), stats[i.key], self.trusted_since)
        }
        guids = list(dict.fromkeys(i.patient_guid for i in items if i.key not in trusted))
        listings = list_patients(
            self.client, self.config.s3.bucket, guids, self.config.transfer.upload_concurrency
        )

        unchanged: set[str] = set()  # confirmed by this run's listing
        for item in items:
            listing = listings.get(item.patient_guid)
            if item.key in trusted or listing is None or isinstance(listing, Exception):
                continue
            st = stats.get(item.key)
            if (
                st is not None
                and st.st_size
                and verified_unchanged(item, rows.get(item.key), listing.get(item.key), st)
            ):
                unchanged.add(item.key)
        if self.catalog is not None and unchanged:
            try:
                self.catalog.record_check(self.config.clinic_id, sorted(unchanged))
            except Exception as exc:  # noqa: BLE001 - only the trust window is not renewed
                log.warning(
                    "catalog: could not record %d confirmation(s): %s",
                    len(unchanged),
                    describe(exc),
                )
        if self.catalog is not None:
            pending = [
                PendingItem(i.key, i.rel_path, i.image_id, i.patient_guid)
                for i in items
                if i.key not in unchanged
                and i.key not in trusted
                and not isinstance(listings[i.patient_guid], Exception)
            ]
            try:
                self.catalog.mark_pending(self.config.clinic_id, pending, self.flow_run_id)
            except Exception as exc:  # noqa: BLE001 - nothing is uploaded unrecorded
                reason = f"not uploaded: the catalog cannot record it: {describe(exc)}"
                progress.advance(len(items))
                return [
                    Outcome(UNCHANGED, i.rel_path, i.key, trusted=i.key in trusted)
                    if i.key in unchanged or i.key in trusted
                    else Outcome(FAILED, i.rel_path, i.key, reason=reason)
                    for i in items
                ]

        def run(item: PlannedImage) -> Outcome:
            if item.key in trusted:
                return Outcome(UNCHANGED, item.rel_path, item.key, trusted=True)
            if item.key in unchanged:
                return Outcome(UNCHANGED, item.rel_path, item.key)  # not read again
            if self.fatal:
                reason = f"not attempted: {self.fatal}"
                return Outcome(FAILED, item.rel_path, item.key, reason=reason, fatal=True)
            listing = listings[item.patient_guid]
            if isinstance(listing, Exception):
                if classify(listing) is ErrorKind.CONFIG:
                    self.fatal = self.fatal or config_error_message(listing, self.config.s3.bucket)
                    return Outcome(FAILED, item.rel_path, item.key, reason=self.fatal, fatal=True)
                reason = f"cannot list {patient_prefix(item.patient_guid)}: {describe(listing)}"
                return Outcome(FAILED, item.rel_path, item.key, reason=reason)
            return self._safe_process(item, listing.get(item.key), rows.get(item.key))

        def run_and_report(item: PlannedImage) -> Outcome:
            outcome = run(item)
            progress.advance(1, outcome.bytes if outcome.status == UPLOADED else 0)
            return outcome

        # only images with work to do go to the pool (a no-change batch needs no threads)
        work = [i for i in items if i.key not in trusted and i.key not in unchanged]
        progress.advance(len(items) - len(work))
        done: dict[str, Outcome] = {}
        try:
            if work:
                workers = min(self.config.transfer.upload_concurrency, len(work))
                with ThreadPoolExecutor(workers, thread_name_prefix="pdata-upload") as pool:
                    results = pool.map(run_and_report, work)
                    done = {i.key: o for i, o in zip(work, results, strict=True)}
        finally:
            self.flush()
        outcomes = [done[i.key] if i.key in done else run(i) for i in items]
        rejected = [o.key for o in outcomes if o.status == REJECTED]
        if self.catalog is not None and rejected:
            try:
                self.catalog.release_pending(self.config.clinic_id, rejected)
            except Exception:  # noqa: BLE001 - a stale pending row is redone next run
                log.warning("catalog: could not release %d pending row(s)", len(rejected))
        return [
            Outcome(FAILED, o.path, o.key, reason=self._unrecorded[o.key])
            if o.key in self._unrecorded and o.status != FAILED
            else o
            for o in outcomes
        ]


def _verified_from_this_file(
    item: PlannedImage, row: CatalogRow | None, st: os.stat_result
) -> bool:
    """The catalog verified this key from this path with this size and mtime."""
    return (
        row is not None
        and row.state == VERIFIED
        and row.rel_path == item.rel_path
        and row.size == st.st_size
        and row.mtime_ns == st.st_mtime_ns
    )


def trusted_unchanged(
    item: PlannedImage, row: CatalogRow | None, st: os.stat_result, since: datetime | None
) -> bool:
    """The catalog verified this key from this file, and S3 confirmed it at or after
    ``since``: neither S3 nor the file needs to be asked."""
    return (
        since is not None
        and st.st_size > 0
        and _verified_from_this_file(item, row, st)
        and row.confirmed_at is not None
        and row.confirmed_at >= since
    )


def verified_unchanged(
    item: PlannedImage, row: CatalogRow | None, remote: RemoteObject | None, st: os.stat_result
) -> bool:
    """The catalog verified this key from this file, and S3 lists it with the size and
    ETag that were verified: no need to read the file."""
    return (
        _verified_from_this_file(item, row, st)
        and remote is not None
        and remote.size == st.st_size
        and row.etag == remote.etag
    )
