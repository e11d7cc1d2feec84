"""One error taxonomy: S3 errors by operation and code, OS errors as the environment."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from pdata_sync.base.errors import ErrorKind, classify, describe, s3_config_message


def s3_error(operation: str, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": ""}}, operation)


@pytest.mark.parametrize(
    ("operation", "code", "kind"),
    [
        ("HeadBucket", "404", ErrorKind.CONFIG),  # the bucket is missing: the set-up
        ("HeadObject", "404", ErrorKind.PERMANENT),  # one object is missing: that image
        ("GetObject", "NoSuchKey", ErrorKind.PERMANENT),
        ("UploadPart", "NoSuchUpload", ErrorKind.PERMANENT),
        ("ListObjectsV2", "NoSuchBucket", ErrorKind.CONFIG),
        ("HeadObject", "403", ErrorKind.CONFIG),  # no read permission: the set-up
        ("PutObject", "AccessDenied", ErrorKind.CONFIG),
        ("PutObject", "SlowDown", ErrorKind.TRANSIENT),
        ("PutObject", "BadDigest", ErrorKind.TRANSIENT),
        ("PutObject", "SomethingNew", ErrorKind.PERMANENT),
    ],
)
def test_s3_errors_are_read_by_operation_and_code(operation, code, kind):
    assert classify(s3_error(operation, code)) is kind


def test_config_messages_name_the_bucket_and_the_setting():
    assert s3_config_message(s3_error("HeadBucket", "404"), "b1") == (
        "S3: bucket 'b1' does not exist (s3.bucket)"
    )
    assert "access denied writing to bucket 'b1'" in s3_config_message(
        s3_error("PutObject", "AccessDenied"), "b1"
    )


@pytest.mark.parametrize(
    "exc",
    [PermissionError(13, "Permission denied"), FileNotFoundError(2, "gone"), OSError(5, "I/O")],
)
def test_unreadable_files_are_the_environment_not_bad_input(exc):
    assert classify(exc) is ErrorKind.ENVIRONMENT


def test_an_s3_failure_is_described_by_operation_code_and_status_never_the_message():
    """A server that repeats the request's key in its message (a research key holds a
    pseudonym) must not have it copied into a failure reason (issue 33)."""
    key = "research/p1/RPABCDEFGHIJKLMNOP/2.25.1/2.25.2/2.25.3.dcm"
    exc = ClientError(
        {
            "Error": {"Code": "AccessDenied", "Message": f"denied {key}", "Key": key},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "PutObject",
    )
    assert describe(exc) == "S3 PutObject failed: AccessDenied (HTTP 403)"
