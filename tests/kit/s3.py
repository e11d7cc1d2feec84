"""S3 helpers that only tests and benchmarks use."""

from __future__ import annotations

from typing import Any


def empty_bucket(client: Any, bucket: str, prefix: str = "") -> None:
    """Delete every object and abort every open multipart upload under ``prefix``."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:  # a page holds at most 1,000 keys, as many as one delete_objects takes
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    uploads = client.get_paginator("list_multipart_uploads")
    for page in uploads.paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []) or []:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def destroy_versions(client: Any, bucket: str) -> None:
    """Delete every version and delete marker of a versioned bucket (none locked), so the
    bucket can be deleted: what a test's teardown does, never the product."""
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in (page.get("Versions") or []) + (page.get("DeleteMarkers") or [])
        ]
        if doomed:
            client.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
