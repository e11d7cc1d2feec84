"""The move out of ``images/``: a retired object is copied under ``retired/`` (by clinic and
time, with why, when and by which run in its metadata, and the original's Object Lock), the
copy checked, then the original deleted; an upload over an object first keeps the content it
replaces the same way. On a versioned bucket the delete is a plain DELETE: it leaves a
delete marker, and a locked version stays (pdata-sync never deletes a version).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from pdata_sync.archive.objects import lock_in
from pdata_sync.archive.uploads import CONTENT_TYPE
from pdata_sync.base.errors import PermanentError, s3_code

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
    client: Any,
    bucket: str,
    key: str,
    target: str,
    retirement: Mapping[str, str] | Callable[[str], Mapping[str, str]],
) -> str | None:
    """Copy ``key`` to ``target`` (under ``retired/``) with its metadata plus
    ``retirement``, and check the copy holds the same size and SHA-256; the original stays.
    What an upload over an object keeps of the content it replaces. ``retirement`` may
    depend on which bytes are copied: a function of their ETag (read before the copy).
    Returns the ETag of what was copied (the caller compares it with the ETag it
    verified), or None when ``key`` is gone."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if s3_code(exc)[1] in ("404", "NoSuchKey"):
            return None
        raise
    etag = str(head.get("ETag", "")).strip('"')
    if callable(retirement):
        retirement = retirement(etag)
    metadata = {**(head.get("Metadata") or {}), **retirement}
    client.copy(
        {"Bucket": bucket, "Key": key},
        bucket,
        target,
        ExtraArgs={
            "Metadata": metadata,
            "MetadataDirective": "REPLACE",
            "ContentType": head.get("ContentType") or CONTENT_TYPE,
            # a copy is a new object: S3 does not carry the lock over, so it is asked for
            **(lock_in(head) or {}),
        },
    )
    copied = client.head_object(Bucket=bucket, Key=target)
    same_sha = (copied.get("Metadata") or {}).get("sha256") == metadata.get("sha256")
    if copied["ContentLength"] != head["ContentLength"] or not same_sha:
        raise PermanentError(
            f"the retired copy of {key} does not match the original (size or sha256); "
            "the original was kept"
        )
    return etag
