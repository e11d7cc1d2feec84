"""What the tests' S3 server (SeaweedFS, tests/kit) does with Object Lock, measured rather
than assumed (ADR 0017): retirement and drift repair on a locked bucket will rely on it. A
bucket made with Object Lock is versioned; the version a COMPLIANCE retention protects
cannot be deleted, an overwrite adds a version and the locked one stays."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

LOCKED = "pdata-lock-check"


def test_seaweedfs_enforces_a_compliance_lock_on_delete_and_overwrite(seaweed):
    client = seaweed.client()
    try:
        client.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    versioning = client.get_bucket_versioning(Bucket=LOCKED)
    assert versioning.get("Status") == "Enabled"  # Object Lock implies versioning

    key = f"images/{uuid.uuid4()}.dcm"  # the bucket and its locked versions outlive a test
    until = datetime.now(UTC) + timedelta(days=1)
    first = client.put_object(
        Bucket=LOCKED,
        Key=key,
        Body=b"first",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )["VersionId"]
    held = client.get_object_retention(Bucket=LOCKED, Key=key, VersionId=first)
    assert held["Retention"]["Mode"] == "COMPLIANCE"

    # destroying the locked version is refused by the server
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=LOCKED, Key=key, VersionId=first)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # an overwrite and a plain DELETE add a version and a delete marker; the locked one stays
    client.put_object(Bucket=LOCKED, Key=key, Body=b"second")
    client.delete_object(Bucket=LOCKED, Key=key)
    versions = client.list_object_versions(Bucket=LOCKED, Prefix=key)
    assert len(versions.get("Versions", [])) == 2 and len(versions.get("DeleteMarkers", [])) == 1
    kept = client.get_object(Bucket=LOCKED, Key=key, VersionId=first)
    assert kept["Body"].read() == b"first"
