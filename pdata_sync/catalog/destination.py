"""Which S3 a catalog row describes: the endpoint and the bucket, as one string.

Rows of one destination never vouch for another: a clinic pointed at a new bucket or
endpoint starts there from scratch (listing and content comparison)."""

from __future__ import annotations

from urllib.parse import urlsplit


def destination_of(endpoint_url: str | None, bucket: str) -> str:
    """``s3://bucket`` on AWS (bucket names are global there), ``scheme://host:port/bucket``
    on any other endpoint (scheme and host lower-cased, no trailing slash)."""
    if not endpoint_url:
        return f"s3://{bucket}"
    parts = urlsplit(endpoint_url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}/{bucket}"
