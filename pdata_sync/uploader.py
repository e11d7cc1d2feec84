"""Upload one batch of planned images: compare with S3, upload what is new or changed.

Per batch, each patient prefix is listed once; an image whose object has the same size and
the ETag its bytes would produce is *unchanged* (no HEAD, no upload). Everything else is
read, checked to be DICOM, hashed and uploaded with checksums S3 verifies. Uploads run
concurrently on one shared boto3 client; each image's outcome is returned as data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import ClinicConfig
from .dicom_meta import expected_etag, read_header, sha256_file
from .errors import BadInputError, ErrorKind, SourceChangedError, classify, describe
from .keys import patient_prefix
from .plan import PlannedImage
from .s3_store import (
    MB,
    RemoteObject,
    build_metadata,
    head_sha256,
    is_md5_etag,
    list_prefix,
    put_multipart,
    put_small,
)

log = logging.getLogger(__name__)

UPLOADED = "uploaded"
UNCHANGED = "unchanged"
REJECTED = "rejected"
FAILED = "failed"

_STABLE_READ_TRIES = 3
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

    def __init__(self, config: ClinicConfig, client: Any):
        self.config = config
        self.client = client
        self.root = Path(config.pdata_root)
        self.threshold = config.transfer.multipart_threshold_mb * MB
        self.part_size = config.transfer.part_size_mb * MB
        self.fatal: str | None = None  # first configuration error seen; stops the batch

    def _is_unchanged(self, path: Path, size: int, remote: RemoteObject | None) -> bool:
        if remote is None or remote.size != size:
            return False
        if is_md5_etag(remote.etag):
            local = expected_etag(path, size, self.threshold, self.part_size)
            if local == remote.etag:
                return True
            if "-" not in remote.etag:
                return False  # a single-part MD5 ETag that differs: content differs
        # An ETag we cannot reproduce (other part size, SSE-KMS): compare the SHA-256
        # we stored in the object's metadata.
        return head_sha256(self.client, self.config.s3.bucket, remote.key) == sha256_file(path)

    def process(self, item: PlannedImage, remote: RemoteObject | None) -> Outcome:
        """Make sure ``item`` is in S3 with the file's current content.

        A file that changes while it is read or uploaded is tried again (it may be being
        written); if it keeps changing, :class:`SourceChangedError` is raised and nothing
        is stored.
        """
        for attempt in range(1, SOURCE_CHANGE_ATTEMPTS + 1):
            try:
                return self._process_once(item, remote)
            except SourceChangedError as exc:
                if attempt == SOURCE_CHANGE_ATTEMPTS:
                    raise SourceChangedError(
                        f"{exc} ({attempt} attempts); will be tried again next run"
                    ) from None
                time.sleep(SOURCE_CHANGE_PAUSE * attempt)
        raise AssertionError("unreachable")

    def _process_once(self, item: PlannedImage, remote: RemoteObject | None) -> Outcome:
        path = self.root / item.rel_path
        size = os.stat(path).st_size
        if size == 0:
            raise BadInputError("empty file")
        if self._is_unchanged(path, size, remote):
            return Outcome(UNCHANGED, item.rel_path, item.key)
        bucket = self.config.s3.bucket
        if size <= self.threshold:
            data, st = _read_stable(path)
            header = read_header(data)
            metadata = self._metadata(item, hashlib.sha256(data).hexdigest(), header)
            put_small(self.client, bucket, item.key, data, metadata)
            after = os.stat(path)
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                # what we stored was read from a file that was still being written:
                # try again (the new upload replaces it)
                raise SourceChangedError("file changed while it was being uploaded")
            return Outcome(UPLOADED, item.rel_path, item.key, bytes=len(data))
        header = read_header(path)
        before = os.stat(path)
        sha = sha256_file(path)
        metadata = self._metadata(item, sha, header)
        put_multipart(
            self.client,
            bucket,
            item.key,
            path,
            part_size=self.part_size,
            expected_sha256=sha,
            expected_size=before.st_size,
            expected_mtime_ns=before.st_mtime_ns,
            metadata=metadata,
        )
        return Outcome(UPLOADED, item.rel_path, item.key, bytes=before.st_size)

    def _metadata(self, item: PlannedImage, sha: str, header: Any) -> dict[str, str]:
        return build_metadata(
            clinic_id=self.config.clinic_id,
            image_id=item.image_id,
            image_name=item.image_name,
            sha256_hex=sha,
            header=header,
        )

    def _safe_process(self, item: PlannedImage, remote: RemoteObject | None) -> Outcome:
        try:
            return self.process(item, remote)
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
        """Process ``items``: list each patient prefix once, then upload concurrently."""
        listings: dict[str, dict[str, RemoteObject] | Exception] = {}
        for guid in dict.fromkeys(i.patient_guid for i in items):
            prefix = patient_prefix(guid)
            try:
                listings[guid] = list_prefix(self.client, self.config.s3.bucket, prefix)
            except Exception as exc:  # noqa: BLE001 - reported on each image of the prefix
                listings[guid] = exc

        def run(item: PlannedImage) -> Outcome:
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
            return self._safe_process(item, listing.get(item.key))

        workers = min(self.config.transfer.upload_concurrency, max(1, len(items)))
        with ThreadPoolExecutor(workers, thread_name_prefix="pdata-upload") as pool:
            return list(pool.map(run, items))
