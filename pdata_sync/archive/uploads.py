"""Checksummed uploads and what confirms them, and aborting interrupted multipart uploads.

Every upload carries a SHA-256 that S3 verifies on receipt (``x-amz-checksum-sha256``, and
per part with a Content-MD5 for multipart uploads), so a body damaged in transit is refused
by the server. Single PUTs go through obstore (:mod:`pdata_sync.archive.s3_put`, ADR 0011),
which retries them itself; multipart uploads through boto3. An object is confirmed (by the
answer, else a HEAD) before anything records it as archived.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pdata_sync.archive import s3_put
from pdata_sync.base.errors import (
    PermanentError,
    SourceChangedError,
)
from pdata_sync.identity.keys import encode_name_for_metadata
from pdata_sync.source.dicom_meta import DicomHeader, multipart_etag

CONTENT_TYPE = "application/dicom"

MB = 1024 * 1024

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")

# Parts of one multipart upload in flight at once (memory: this many parts per file).
PARTS_IN_FLIGHT = 4

# Part buffers held at once by the whole process, across concurrent multipart uploads:
# memory stays under about this many part sizes (12 x 8 MB) however many files go up.
MAX_PARTS_IN_MEMORY = 12

_PART_SLOTS = threading.BoundedSemaphore(MAX_PARTS_IN_MEMORY)

METADATA_KEYS = (
    "clinic-id",
    "image-id",
    "image-name",
    "sha256",
    "study-instance-uid",
    "series-instance-uid",
    "sop-instance-uid",
    "modality",
    "acquisition-date",
    "source-path",
)


@dataclass(frozen=True)
class Stored:
    """What one upload sent: the ETag S3 answered and the checksums of the bytes sent."""

    etag: str  # as S3 answered, without quotes
    # MD5 ETag of the bytes sent (multipart: md5 of the part md5s, -N); None for a single
    # PUT to a server that checks x-amz-checksum-sha256 (s3_put.checks_sha256)
    sent_etag: str | None
    sent_sha256: str  # base64 SHA-256 (multipart: composite of the part SHA-256s, -N)
    size: int
    multipart: bool = False
    answered_sha256: str | None = None  # the ChecksumSHA256 S3 answered, if any


def is_md5_etag(etag: str) -> bool:
    """True if ``etag`` is an MD5 (or multipart MD5) ETag we can reproduce locally."""
    return bool(_MD5_ETAG.match(etag))


def build_metadata(
    *,
    clinic_id: str,
    image_id: int,
    image_name: str | None,
    sha256_hex: str,
    header: DicomHeader,
    rel_path: str,
) -> dict[str, str]:
    """The object's user metadata: exactly :data:`METADATA_KEYS`, all ASCII. ``source-path``
    is the file's path relative to PDATA (``P_{patientId}/{name}.dcm``), what a restore
    from S3 alone writes it back to (pdata_sync.archive.restore)."""
    return {
        "clinic-id": clinic_id,
        "image-id": str(image_id),
        "image-name": encode_name_for_metadata(image_name),
        "sha256": sha256_hex,
        "study-instance-uid": header.study_instance_uid,
        "series-instance-uid": header.series_instance_uid,
        "sop-instance-uid": header.sop_instance_uid,
        "modality": header.modality,
        "acquisition-date": header.acquisition_date,
        "source-path": encode_name_for_metadata(rel_path),
    }


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def put_small(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    metadata: dict[str, str],
    sha256_digest: bytes | None = None,
    lock: dict[str, Any] | None = None,
) -> Stored:
    """Upload ``data`` in one PUT through obstore (:mod:`pdata_sync.archive.s3_put`) with the
    SHA-256 check S3 makes on receipt (``sha256_digest``: the caller's SHA-256 of ``data``,
    if it has it already). Where the server does not show that it makes that check
    (:func:`~pdata_sync.archive.s3_put.checks_sha256`), our MD5 of ``data`` goes with the answer,
    for :func:`confirm_object` to compare with the ETag. ``lock``: the version's Object Lock
    (pdata_sync.archive.retention.lock_params)."""
    sha = _b64(sha256_digest or hashlib.sha256(data).digest())
    checked = s3_put.checks_sha256(
        client, bucket, key, data, content_type=CONTENT_TYPE, metadata=metadata, lock=lock
    )
    md5 = None if checked else hashlib.md5(data).hexdigest()
    etag = s3_put.put_object(
        client, bucket, key, data, content_type=CONTENT_TYPE, metadata=metadata, lock=lock
    )
    return Stored(etag=etag, sent_etag=md5, sent_sha256=sha, size=len(data))


def _read_part(fh: Any, part_size: int) -> bytes:
    chunks = []
    remaining = part_size
    while remaining:
        chunk = fh.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def put_multipart(
    client: Any,
    bucket: str,
    key: str,
    path: str | Path,
    *,
    part_size: int,
    digests: list[tuple[bytes, bytes]],
    expected_size: int,
    metadata: dict[str, str],
    expected_mtime_ns: int | None = None,
    lock: dict[str, Any] | None = None,
) -> Stored:
    """Stream ``path`` up in parts of ``part_size``, each with its own SHA-256 and MD5.

    ``digests``: the (MD5, SHA-256) of every part, computed when the file was hashed
    (:func:`pdata_sync.source.dicom_meta.part_digests`). S3 refuses any part whose bytes no longer
    match them, so the parts need not be hashed again; the file is stat'ed again before
    completing, and if it changed (e.g. it is still being written) the upload is aborted,
    so no torn object is ever created. Memory: at most ``PARTS_IN_FLIGHT`` parts per file
    and ``MAX_PARTS_IN_MEMORY`` in the process. Any failure aborts the multipart upload.
    ``lock``: the version's Object Lock, given when the upload is created.
    """
    created = client.create_multipart_upload(
        Bucket=bucket,
        Key=key,
        ContentType=CONTENT_TYPE,
        ChecksumAlgorithm="SHA256",
        Metadata=metadata,
        **(lock or {}),
    )
    upload_id = created["UploadId"]
    parts: dict[int, dict[str, Any]] = {}
    pending: set[Future[dict[str, Any]]] = set()

    def send(number: int, body: bytes) -> dict[str, Any]:
        try:
            if len(body) != min(part_size, expected_size - (number - 1) * part_size):
                raise SourceChangedError("file changed while it was being uploaded")
            md5, sha = digests[number - 1]
            try:
                r = client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentMD5=_b64(md5),
                    ChecksumSHA256=_b64(sha),
                )
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in _DIGEST_CODES and _changed(path, expected_size, expected_mtime_ns):
                    raise SourceChangedError("file changed while it was being uploaded") from None
                raise
        finally:
            _PART_SLOTS.release()
        return {"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": _b64(sha)}

    try:
        with open(path, "rb") as fh, ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
            for number in range(1, len(digests) + 1):
                if len(pending) >= PARTS_IN_FLIGHT:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        part = fut.result()
                        parts[part["PartNumber"]] = part
                _PART_SLOTS.acquire()  # released by send(), whatever happens
                try:
                    body = _read_part(fh, part_size)
                except BaseException:
                    _PART_SLOTS.release()
                    raise
                pending.add(pool.submit(send, number, body))
                del body
            for fut in pending:
                part = fut.result()
                parts[part["PartNumber"]] = part
        after = os.stat(path)
        if after.st_size != expected_size or (
            expected_mtime_ns is not None and after.st_mtime_ns != expected_mtime_ns
        ):
            raise SourceChangedError("file changed while it was being uploaded; not stored")
        response = client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [parts[n] for n in sorted(parts)]},
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters more
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return Stored(
        etag=str(response.get("ETag", "")).strip('"'),
        sent_etag=multipart_etag([md5 for md5, _ in digests]),
        sent_sha256=f"{_b64(hashlib.sha256(b''.join(sha for _, sha in digests)).digest())}"
        f"-{len(digests)}",
        size=expected_size,
        multipart=True,
        answered_sha256=response.get("ChecksumSHA256"),
    )


_DIGEST_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidRequest"}


def _changed(path: str | Path, size: int, mtime_ns: int | None) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return True
    return st.st_size != size or (mtime_ns is not None and st.st_mtime_ns != mtime_ns)


def confirm_object(client: Any, bucket: str, key: str, stored: Stored) -> str:
    """Check that what S3 stores under ``key`` is what was sent; returns the ETag.

    For a single PUT to a server that checks ``x-amz-checksum-sha256`` (no MD5 was taken:
    ``sent_etag`` is None), its acceptance is the confirmation: it refuses a body whose
    SHA-256 is not the one sent. Otherwise S3's answer reports its own checksum of what it
    stored: an MD5 ETag (or, where the ETag is not an MD5, e.g. SSE-KMS, the SHA-256 it
    computed) equal to ours means the same bytes, hence the same size. Otherwise
    (multipart, or an answer without a checksum), S3 is asked with a HEAD: the size must
    match, and its MD5 ETag or SHA-256 checksum must match ours. Raises
    :class:`PermanentError` when S3 does not confirm: such an object is never marked
    verified.
    """
    if not stored.multipart:
        if stored.sent_etag is None:
            return stored.etag
        if is_md5_etag(stored.etag):
            if stored.etag != stored.sent_etag:
                raise PermanentError(
                    f"S3 answered ETag {stored.etag}, the bytes sent give "
                    f"{stored.sent_etag}; not verified"
                )
            return stored.etag
        if stored.answered_sha256:
            if stored.answered_sha256 != stored.sent_sha256:
                raise PermanentError(
                    f"S3 answered SHA-256 {stored.answered_sha256}, the bytes sent "
                    f"give {stored.sent_sha256}; not verified"
                )
            return stored.etag
    response = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    length = int(response.get("ContentLength", -1))
    etag = str(response.get("ETag", "")).strip('"')
    if length != stored.size:
        raise PermanentError(
            f"S3 reports {length} bytes after the upload, {stored.size} were sent; not verified"
        )
    if is_md5_etag(etag):
        if etag != stored.sent_etag:
            raise PermanentError(
                f"S3 reports ETag {etag} after the upload, the bytes sent give "
                f"{stored.sent_etag}; not verified"
            )
        return etag
    checksum = response.get("ChecksumSHA256")
    if checksum:
        if checksum.split("-")[0] != stored.sent_sha256.split("-")[0]:
            raise PermanentError(
                f"S3 reports SHA-256 {checksum} after the upload, the bytes sent give "
                f"{stored.sent_sha256}; not verified"
            )
        return etag
    raise PermanentError("S3 reports neither an MD5 ETag nor a SHA-256 checksum; cannot verify it")


def abort_interrupted_uploads(
    client: Any,
    bucket: str,
    prefix: str,
    belongs: Callable[[str], bool],
    started_before: datetime | None = None,
) -> int:
    """Abort every open multipart upload under ``prefix`` whose key ``belongs`` to us and
    that was started before ``started_before`` (when the caller took the clinic's lock: a
    later one belongs to a live run).

    Left behind by a worker killed mid-upload; they are invisible but cost storage. Returns
    how many were aborted.
    """
    aborted = 0
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []) or []:
            initiated = upload.get("Initiated")
            if started_before is not None and initiated is not None and initiated >= started_before:
                continue
            if belongs(upload["Key"]):
                with contextlib.suppress(ClientError):  # already completed or aborted
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
    return aborted
