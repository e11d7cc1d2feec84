"""Single objects of the archive: metadata from a HEAD, whole or partial bodies, derived
pictures (thumbnails) put beside the images, presigned URLs and downloads.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from pdata_sync.archive import s3_put


def head_metadata(client: Any, bucket: str, key: str) -> dict[str, str]:
    """The user metadata of an object (empty when it has none)."""
    return dict(client.head_object(Bucket=bucket, Key=key).get("Metadata") or {})


def head_sha256(client: Any, bucket: str, key: str) -> str | None:
    """The ``sha256`` user metadata of an object, or None."""
    response = client.head_object(Bucket=bucket, Key=key)
    return (response.get("Metadata") or {}).get("sha256")


def stored_encryption(client: Any, bucket: str, key: str) -> str:
    """How S3 says it stores ``key`` at rest (``AES256``, ``aws:kms``; "" for not)."""
    return str(client.head_object(Bucket=bucket, Key=key).get("ServerSideEncryption") or "")


def get_range(
    client: Any, bucket: str, key: str, length: int, metadata: dict[str, str] | None = None
) -> tuple[bytes, int]:
    """The first ``length`` bytes of an object and the object's full size (its user
    metadata into ``metadata``, when given: the same answer carries it)."""
    response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
    if metadata is not None:
        metadata.update(response.get("Metadata") or {})
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
    client: Any,
    bucket: str,
    key: str,
    body: bytes,
    content_type: str,
    source_sha256: str | None,
    lock: dict[str, Any] | None = None,
) -> None:
    """Store a picture made from an image (a thumbnail), checksummed by S3 like the images;
    ``source-sha256`` records which image content it was made from; ``lock``: the image's
    own Object Lock (a thumbnail shows the patient's X-ray, so it is kept as long)."""
    s3_put.put_object(
        client,
        bucket,
        key,
        body,
        content_type=content_type,
        metadata={"source-sha256": source_sha256} if source_sha256 else {},
        lock=lock,
    )


def stored_lock(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The Object Lock of ``key``'s current version as request parameters (None: none),
    for what is made from it or copied out of it to carry the same date."""
    return lock_in(client.head_object(Bucket=bucket, Key=key))


def lock_in(response: dict[str, Any]) -> dict[str, Any] | None:
    """The Object Lock a HEAD or GET answered, as request parameters (None: none)."""
    mode, until = response.get("ObjectLockMode"), response.get("ObjectLockRetainUntilDate")
    if not mode or until is None:
        return None
    return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}


def presign_get(client: Any, bucket: str, key: str, expires_in: int) -> str:
    """A presigned GET URL valid for ``expires_in`` seconds."""
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
    )


def download_into(client: Any, bucket: str, key: str, fh: BinaryIO) -> None:
    """Write ``key``'s bytes into the open file ``fh`` (the caller decides where files go
    on the worker: :mod:`pdata_sync.base.local_files`)."""
    client.download_fileobj(bucket, key, fh)
