"""S3, the archive of record: the client, the bucket check, listings, checksummed uploads
and what confirms them, aborting interrupted multipart uploads, the move to ``retired/``,
presigned URLs and downloads.

Every upload carries a SHA-256 that S3 verifies on receipt (``x-amz-checksum-sha256``, and
per part with a Content-MD5 for multipart uploads), so a body damaged in transit is refused
by the server. Single PUTs go through obstore (:mod:`pdata_sync.archive.s3_put`, ADR 0011), which
retries them itself; everything else goes through boto3, whose transient errors are retried
by botocore's ``standard`` retry mode (exponential backoff with jitter on throttling, 5xx,
timeouts and connection errors).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.handlers import add_expect_header
from botocore.utils import parse_timestamp

from pdata_sync.archive import s3_put
from pdata_sync.base.config import S3Config, TransferConfig
from pdata_sync.base.errors import (
    ConfigError,
    ErrorKind,
    PermanentError,
    SourceChangedError,
    classify,
    describe,
    s3_code,
    s3_config_message,
)
from pdata_sync.identity.keys import encode_name_for_metadata, is_canonical_guid, patient_prefix
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
)


@dataclass(frozen=True)
class AwsKeys:
    """Explicit AWS credentials (from a Prefect AwsCredentials block); repr hides them."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "AwsKeys(***)"


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


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: datetime


def parse_s3_timestamp(value: Any) -> datetime:
    """S3's timestamps as botocore parses them, ISO 8601 ones without dateutil.

    botocore parses every timestamp with dateutil (about 37 us each); a listing carries one
    per key, which made it most of a 100,000-key walk's CPU. ``datetime.fromisoformat``
    reads S3's ``2026-12-02T18:00:00.000Z`` in 0.1 us; anything it does not read to an
    aware datetime (HTTP dates, epoch seconds) goes to botocore's own parser."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    return parse_timestamp(value)


def make_client(
    cfg: S3Config,
    transfer: TransferConfig | None = None,
    keys: AwsKeys | None = None,
    *,
    max_pool_connections: int | None = None,
) -> Any:
    """A boto3 S3 client for ``cfg``; thread-safe, meant to be shared by a batch's uploads."""
    transfer = transfer or TransferConfig()
    pool = max_pool_connections or max(10, transfer.upload_concurrency * (PARTS_IN_FLIGHT + 1))
    config = Config(
        region_name=cfg.region,
        retries={"mode": "standard", "max_attempts": transfer.max_attempts},
        max_pool_connections=pool,
        connect_timeout=transfer.connect_timeout_seconds,
        read_timeout=transfer.read_timeout_seconds,
        # We send our own SHA-256 and MD5; no extra CRC32 trailer (not all servers take it).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if cfg.endpoint_url else "auto"},
        # SigV4 everywhere: presigned URLs otherwise fall back to SigV2 on custom endpoints
        # (no bounded X-Amz-Expires, refused by newer AWS regions).
        signature_version="s3v4",
        user_agent_extra="pdata-sync",
    )
    session_kwargs: dict[str, Any] = {}
    if keys is not None:
        session_kwargs = {
            "aws_access_key_id": keys.access_key_id,
            "aws_secret_access_key": keys.secret_access_key,
            "aws_session_token": keys.session_token,
        }
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_s3_timestamp
    )
    session = boto3.session.Session(botocore_session=core, **session_kwargs)
    client = session.client("s3", endpoint_url=cfg.endpoint_url, config=config)
    s3_put.register(
        client,
        s3_put.PutSettings(
            bucket_region=cfg.region,
            endpoint_url=cfg.endpoint_url,
            max_attempts=transfer.max_attempts,
            connect_timeout=transfer.connect_timeout_seconds,
            read_timeout=transfer.read_timeout_seconds,
            session=session,
        ),
    )
    # No "Expect: 100-continue": it costs a round trip per PUT (about half the time of a
    # small upload against a nearby server) to save sending a body S3 would refuse, which
    # for our parts of at most a few MB is the cheaper risk.
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def check_bucket(client: Any, bucket: str) -> None:
    """Make sure the bucket exists and these credentials can reach it, else :class:`ConfigError`."""
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise ConfigError(s3_put.NO_CREDENTIALS) from None
    except EndpointConnectionError as exc:
        raise ConfigError(f"S3: cannot connect to {exc.kwargs.get('endpoint_url')}") from None
    except ClientError as exc:
        if classify(exc) is ErrorKind.CONFIG:
            raise ConfigError(s3_config_message(exc, bucket)) from None
        raise ConfigError(f"S3: bucket {bucket!r} cannot be checked: {describe(exc)}") from None


def _remote(obj: Mapping[str, Any]) -> RemoteObject:
    return RemoteObject(
        key=obj["Key"],
        size=int(obj["Size"]),
        etag=str(obj.get("ETag", "")).strip('"'),
        last_modified=obj["LastModified"],
    )


def iter_prefix(client: Any, bucket: str, prefix: str) -> Iterator[RemoteObject]:
    """Every object under ``prefix``, all pages."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield _remote(obj)


def list_prefix(client: Any, bucket: str, prefix: str) -> dict[str, RemoteObject]:
    """``key -> RemoteObject`` for every object under ``prefix``."""
    return {o.key: o for o in iter_prefix(client, bucket, prefix)}


# A batch's patients are listed as one range of images/ when they are many: a LIST page
# holds up to 1,000 keys, where listing each patient's prefix costs one request per patient
# (10,000 requests for a new worker or a full run at 10,000 patients). That pays only while
# the range holds few other objects: in a bucket shared with other clinics their patients'
# random GUIDs interleave with ours. So the walk stops after one page per
# RANGE_PATIENTS_PER_PAGE patients, and the patients it did not reach are listed one by one
# (at worst 1/RANGE_PATIENTS_PER_PAGE more requests than listing each patient).
RANGE_MIN_PATIENTS = 8
RANGE_PATIENTS_PER_PAGE = 4
LIST_PAGE_KEYS = 1000
_IMAGES = "images/"


def _list_range(client: Any, bucket: str, guids: list[str]) -> dict[str, dict[str, RemoteObject]]:
    """The objects of ``guids`` from one walk of ``images/`` from the smallest GUID to the
    largest; the GUIDs the walk did not finish (it gives up after a key budget) are left
    out, and so is the smallest, which the caller lists on its own (below).

    The walk goes through obstore (Rust; ADR 0011): botocore parsed each 1,000-key page
    twice in Python (its check for an error inside a 200 answer, then the answer), about
    0.1 ms of CPU per key with the GIL held. It starts after ``images/{smallest}``: obstore
    drops a trailing slash from the offset, and without it SeaweedFS skips that "folder"
    while AWS includes it, so the smallest GUID's objects are left to a prefix listing
    that both servers answer alike."""
    import obstore

    from pdata_sync.archive import s3_put

    wanted = sorted(set(guids))
    found: dict[str, dict[str, RemoteObject]] = {g: {} for g in wanted[1:]}
    budget = max(1, len(wanted) // RANGE_PATIENTS_PER_PAGE) * LIST_PAGE_KEYS
    stream = obstore.list(
        s3_put.store_of(client, bucket),
        _IMAGES,
        offset=f"{_IMAGES}{wanted[0]}",
        chunk_size=LIST_PAGE_KEYS,
    )
    reached = wanted[0]  # every GUID before this one is complete
    for chunk in stream:
        for meta in chunk:
            key = meta["path"]
            guid, slash, _ = key[len(_IMAGES) :].partition("/")
            if guid > wanted[-1]:
                return found
            reached = guid
            if slash and guid in found:
                found[guid][key] = RemoteObject(
                    key=key,
                    size=int(meta["size"]),
                    etag=str(meta.get("e_tag") or "").strip('"'),
                    last_modified=meta["last_modified"],
                )
        budget -= len(chunk)
        if budget <= 0:
            break
    else:
        return found  # the end of images/
    return {guid: objects for guid, objects in found.items() if guid < reached}


def list_patients(
    client: Any, bucket: str, patient_guids: list[str], workers: int
) -> dict[str, dict[str, RemoteObject] | Exception]:
    """Each patient's objects under ``images/{guid}/`` (``key -> RemoteObject``), by
    patientGuid. Many patients are walked as one range of ``images/`` (above); the others
    are listed one prefix each, ``workers`` at a time (each listing is a round trip: one
    after the other, a WAN's latency times the patients). A patient whose listing failed
    maps to its exception."""

    def listing(guid: str) -> dict[str, RemoteObject] | Exception:
        try:
            return list_prefix(client, bucket, patient_prefix(guid))
        except Exception as exc:  # noqa: BLE001 - the caller decides per patient
            return exc

    if not patient_guids:
        return {}
    listed: dict[str, dict[str, RemoteObject] | Exception] = {}
    rest = list(dict.fromkeys(patient_guids))
    canonical = [g for g in rest if is_canonical_guid(g)]
    if len(canonical) >= RANGE_MIN_PATIENTS:
        try:
            ranged = _list_range(client, bucket, canonical)
        except Exception:  # noqa: BLE001 - each patient's own listing says what is wrong
            ranged = {}
        listed.update(ranged)
        rest = [g for g in rest if g not in ranged]
    if rest:
        with ThreadPoolExecutor(min(workers, len(rest)), thread_name_prefix="s3-list") as pool:
            listed.update(zip(rest, pool.map(listing, rest), strict=True))
    return {guid: listed[guid] for guid in patient_guids}


def is_md5_etag(etag: str) -> bool:
    """True if ``etag`` is an MD5 (or multipart MD5) ETag we can reproduce locally."""
    return bool(_MD5_ETAG.match(etag))


def build_metadata(
    *, clinic_id: str, image_id: int, image_name: str | None, sha256_hex: str, header: DicomHeader
) -> dict[str, str]:
    """The object's user metadata: exactly :data:`METADATA_KEYS`, all ASCII."""
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
) -> Stored:
    """Upload ``data`` in one PUT through obstore (:mod:`pdata_sync.archive.s3_put`) with the
    SHA-256 check S3 makes on receipt (``sha256_digest``: the caller's SHA-256 of ``data``,
    if it has it already). Where the server does not show that it makes that check
    (:func:`~pdata_sync.archive.s3_put.checks_sha256`), our MD5 of ``data`` goes with the answer,
    for :func:`confirm_object` to compare with the ETag."""
    sha = _b64(sha256_digest or hashlib.sha256(data).digest())
    checked = s3_put.checks_sha256(
        client, bucket, key, data, content_type=CONTENT_TYPE, metadata=metadata
    )
    md5 = None if checked else hashlib.md5(data).hexdigest()
    etag = s3_put.put_object(
        client, bucket, key, data, content_type=CONTENT_TYPE, metadata=metadata
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
) -> Stored:
    """Stream ``path`` up in parts of ``part_size``, each with its own SHA-256 and MD5.

    ``digests``: the (MD5, SHA-256) of every part, computed when the file was hashed
    (:func:`pdata_sync.source.dicom_meta.part_digests`). S3 refuses any part whose bytes no longer
    match them, so the parts need not be hashed again; the file is stat'ed again before
    completing, and if it changed (e.g. it is still being written) the upload is aborted,
    so no torn object is ever created. Memory: at most ``PARTS_IN_FLIGHT`` parts per file
    and ``MAX_PARTS_IN_MEMORY`` in the process. Any failure aborts the multipart upload.
    """
    created = client.create_multipart_upload(
        Bucket=bucket,
        Key=key,
        ContentType=CONTENT_TYPE,
        ChecksumAlgorithm="SHA256",
        Metadata=metadata,
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


RETIRED_PREFIX = "retired/"


def retired_key(clinic_id: str, key: str, at: datetime) -> str:
    """Where a retired object goes: outside ``images/`` (retrieval never lists it), by
    clinic and time, keeping its original key so the move is plain to read."""
    return f"{RETIRED_PREFIX}{clinic_id}/{at.astimezone(UTC):%Y%m%dT%H%M%SZ}/{key}"


def retirement_metadata(
    reason: str, at: datetime, flow_run_id: str | None, original_key: str
) -> dict[str, str]:
    """What an object copied to ``retired/`` carries besides its own metadata: why, when,
    by which run, and from which key."""
    return {
        "retired-reason": reason,
        "retired-at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "retired-by-run": flow_run_id or "unknown",
        "retired-from": original_key,
    }


def move_to_retired(
    client: Any, bucket: str, key: str, target: str, retirement: Mapping[str, str]
) -> bool:
    """Copy ``key`` to ``target`` with its metadata plus ``retirement`` (why, when, by
    which run), check the copy holds the same size and SHA-256, then delete ``key``.
    False when ``key`` is already gone (e.g. a run killed between delete and record).

    A failure before the delete leaves the original in place (a copy without a delete is
    harmless: the next run copies again under a new time)."""
    if copy_to_retired(client, bucket, key, target, retirement) is None:
        return False
    client.delete_object(Bucket=bucket, Key=key)
    return True


def copy_to_retired(
    client: Any, bucket: str, key: str, target: str, retirement: Mapping[str, str]
) -> str | None:
    """Copy ``key`` to ``target`` (under ``retired/``) with its metadata plus
    ``retirement``, and check the copy holds the same size and SHA-256; the original stays.
    What an upload over an object keeps of the content it replaces. Returns the ETag of
    what was copied (which bytes were kept: the caller compares it with the ETag it
    verified), or None when ``key`` is gone."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if s3_code(exc)[1] in ("404", "NoSuchKey"):
            return None
        raise
    metadata = {**(head.get("Metadata") or {}), **retirement}
    client.copy(
        {"Bucket": bucket, "Key": key},
        bucket,
        target,
        ExtraArgs={
            "Metadata": metadata,
            "MetadataDirective": "REPLACE",
            "ContentType": head.get("ContentType") or CONTENT_TYPE,
        },
    )
    copied = client.head_object(Bucket=bucket, Key=target)
    same_sha = (copied.get("Metadata") or {}).get("sha256") == metadata.get("sha256")
    if copied["ContentLength"] != head["ContentLength"] or not same_sha:
        raise PermanentError(
            f"the retired copy of {key} does not match the original (size or sha256); "
            "the original was kept"
        )
    return str(head.get("ETag", "")).strip('"')


def head_metadata(client: Any, bucket: str, key: str) -> dict[str, str]:
    """The user metadata of an object (empty when it has none)."""
    return dict(client.head_object(Bucket=bucket, Key=key).get("Metadata") or {})


def head_sha256(client: Any, bucket: str, key: str) -> str | None:
    """The ``sha256`` user metadata of an object, or None."""
    response = client.head_object(Bucket=bucket, Key=key)
    return (response.get("Metadata") or {}).get("sha256")


def get_range(client: Any, bucket: str, key: str, length: int) -> tuple[bytes, int]:
    """The first ``length`` bytes of an object and the object's full size."""
    response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
    body = response["Body"].read()
    content_range = str(response.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    size = int(total) if total.isdigit() else int(response.get("ContentLength", len(body)))
    return body, size


def get_bytes(client: Any, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    """A whole object's bytes and user metadata (for objects small enough to hold in
    memory)."""
    response = client.get_object(Bucket=bucket, Key=key)
    return response["Body"].read(), dict(response.get("Metadata") or {})


def put_derived(
    client: Any, bucket: str, key: str, body: bytes, content_type: str, source_sha256: str | None
) -> None:
    """Store a picture made from an image (a thumbnail), checksummed by S3 like the images;
    ``source-sha256`` records which image content it was made from."""
    s3_put.put_object(
        client,
        bucket,
        key,
        body,
        content_type=content_type,
        metadata={"source-sha256": source_sha256} if source_sha256 else {},
    )


def presign_get(client: Any, bucket: str, key: str, expires_in: int) -> str:
    """A presigned GET URL valid for ``expires_in`` seconds."""
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
    )


def download_into(client: Any, bucket: str, key: str, fh: BinaryIO) -> None:
    """Write ``key``'s bytes into the open file ``fh`` (the caller decides where files go
    on the worker: :mod:`pdata_sync.base.local_files`)."""
    client.download_fileobj(bucket, key, fh)
