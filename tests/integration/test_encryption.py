"""Encryption at rest (``s3.server_side_encryption``) through the CLI on SeaweedFS, which
stores and reports SSE-S3 (AES256): every object a sync writes is encrypted, verify finds an
image someone rewrote without it, and the next sync writes the same bytes again, encrypted."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import assert_exactly_expected

BUCKET = "dental-images"
AES = {"s3": {"server_side_encryption": "AES256"}}


def stored_as(client, key: str) -> str | None:
    return client.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption")


def every_key(client) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return [o["Key"] for o in listed]


def test_every_object_is_encrypted_and_one_found_without_it_is_written_again(make_site):
    site = make_site(settings=AES)
    client = site.client
    code, summary = site.sync()
    assert code == 0, summary
    keys = every_key(client)
    assert any(k.startswith("thumbnails/") for k in keys)
    assert {k: stored_as(client, k) for k in keys} == {k: "AES256" for k in keys}

    # someone writes an image again, same bytes and metadata, without encryption
    key = next(k for k in keys if k.startswith("images/"))
    got = client.get_object(Bucket=BUCKET, Key=key)
    client.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=got["Body"].read(),
        Metadata=got["Metadata"],
        ContentType=got["ContentType"],
    )
    assert stored_as(client, key) is None  # the server did not encrypt it by itself

    code, report = site.verify()
    assert code == 1 and not report["ok"], report
    assert [u["key"] for u in report["unencrypted"]] == [key]
    assert "unencrypted, not AES256" in report["unencrypted"][0]["reason"]
    assert report["missing"] == report["changed"] == []

    # and a file changes: what it replaces is kept under retired/, encrypted too
    changed = next(e for e in site.clinic.expected if e["image_id"] != image_of(key))
    path = Path(site.clinic.pdata_root, changed["path"])
    path.write_bytes(path.read_bytes() + b"\0\0")
    code, summary = site.sync()
    assert code == 0, summary["failed"]
    # the unencrypted one sent again, encrypted; nothing kept for it (nothing was replaced)
    retired = [k for k in every_key(client) if k.startswith("retired/")]
    assert retired and not [k for k in retired if k.endswith(key.rsplit("/", 1)[1])]
    assert {stored_as(client, k) for k in retired} == {"AES256"}
    assert stored_as(client, key) == "AES256"
    code, report = site.verify()
    assert code == 0 and report["ok"] and report["unencrypted"] == [], report
    assert_exactly_expected(client, site.clinic)


def image_of(key: str) -> int:
    """The image id in a key of the default template ({clinic}_{image}_{name}.dcm)."""
    return int(key.rsplit("/", 1)[1].split("_")[1])


def test_kms_key_without_aws_kms_is_refused_at_load(tmp_path):
    import pytest

    from pdata_sync.base.config import S3Config

    with pytest.raises(ValueError, match="kms_key_id needs server_side_encryption: aws:kms"):
        S3Config(bucket=BUCKET, server_side_encryption="AES256", kms_key_id="alias/x")
    s3 = S3Config(bucket=BUCKET, server_side_encryption="aws:kms", kms_key_id="alias/x")
    assert s3.encryption() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/x"}
