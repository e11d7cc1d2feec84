"""The single-PUT data path (obstore, pdata_sync/archive/s3_put.py, ADR 0011) against a real
SeaweedFS on 127.0.0.1: what lands with the object, how S3's refusals and silences are
read by the one error taxonomy, and that it reaches S3 the way boto3 does (credentials,
retries, proxy, CA bundle)."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from pdata_sync.archive import s3_put
from pdata_sync.archive.s3_client import AwsKeys, make_client
from pdata_sync.archive.uploads import confirm_object, put_small
from pdata_sync.base.config import S3Config, TransferConfig
from pdata_sync.base.errors import (
    ConfigError,
    ErrorKind,
    classify,
    describe,
    s3_code,
    s3_config_message,
)
from tests.conftest import BUCKET
from tests.kit.s3 import empty_bucket
from tests.support.fault_proxy import Fault, FaultProxy

DATA = os.urandom(200_000)
KEY = "images/put-test/a.dcm"


@pytest.fixture
def s3(seaweed, monkeypatch):
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "HTTP_PROXY", "http_proxy", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    client = seaweed.client()
    empty_bucket(client, BUCKET, "images/put-test/")
    yield client
    empty_bucket(client, BUCKET, "images/put-test/")


def client_for(endpoint: str, attempts: int = 1, keys: AwsKeys | None = None):
    s3 = S3Config(bucket=BUCKET, region="us-east-1", endpoint_url=endpoint)
    return make_client(s3, TransferConfig(max_attempts=attempts, read_timeout_seconds=5), keys)


def test_an_upload_carries_type_metadata_and_the_checksum_s3_verified(seaweed, s3):
    client = client_for(seaweed.endpoint)
    sha = hashlib.sha256(DATA).digest()
    stored = put_small(client, BUCKET, KEY, DATA, {"sha256": sha.hex(), "image-id": "7"})
    assert stored.etag == hashlib.md5(DATA).hexdigest()
    assert confirm_object(client, BUCKET, KEY, stored) == stored.etag
    head = s3.head_object(Bucket=BUCKET, Key=KEY, ChecksumMode="ENABLED")
    assert head["ContentType"] == "application/dicom"
    assert head["Metadata"] == {"sha256": sha.hex(), "image-id": "7"}
    assert head["ChecksumSHA256"] == base64.b64encode(sha).decode()  # S3 checked it
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == DATA


def test_keys_from_a_prefect_block_are_used_without_any_in_the_environment(
    seaweed, s3, monkeypatch
):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    keys = AwsKeys(access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key)
    put_small(client_for(seaweed.endpoint, keys=keys), BUCKET, KEY, DATA, {})
    assert s3.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"] == len(DATA)


def test_refused_credentials_are_a_configuration_error_naming_the_bucket(seaweed, s3):
    keys = AwsKeys(access_key_id=seaweed.access_key, secret_access_key="not-the-secret")
    with pytest.raises(Exception) as caught:
        put_small(client_for(seaweed.endpoint, keys=keys), BUCKET, KEY, DATA, {})
    assert classify(caught.value) is ErrorKind.CONFIG
    assert s3_code(caught.value) == ("PutObject", "SignatureDoesNotMatch")
    assert s3_config_message(caught.value, BUCKET) == (
        f"S3: the AWS credentials were refused by bucket {BUCKET!r} (SignatureDoesNotMatch)"
    )
    assert "not-the-secret" not in describe(caught.value)


def test_no_credentials_at_all_stop_with_one_line(seaweed, s3, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        put_small(client_for(seaweed.endpoint), BUCKET, KEY, DATA, {})


def test_throttling_is_retried_then_reported_transient_with_s3s_code(seaweed, s3):
    with FaultProxy(seaweed.endpoint) as proxy:
        client = client_for(proxy.url, attempts=3)
        put_small(client, BUCKET, KEY, DATA, {})  # asks whether the server checks SHA-256
        proxy.set(Fault("status", status=503))
        with pytest.raises(Exception) as caught:
            put_small(client, BUCKET, KEY, DATA, {})
        assert proxy.state.faults_fired == 3  # transfer.max_attempts tries, then given up
    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert describe(caught.value).startswith("S3 PutObject failed: SlowDown")


def test_a_server_that_checks_sha256_confirms_uploads_without_an_md5(seaweed, s3):
    """SeaweedFS refuses a body whose x-amz-checksum-sha256 is not its own, as AWS does: the
    first upload through a client shows it (and stores nothing but the image), and no MD5
    is taken of any upload through that client (about 0.4 ms of CPU per 315 KB)."""
    client = client_for(seaweed.endpoint)
    other = KEY.replace("a.dcm", "b.dcm")
    first = put_small(client, BUCKET, KEY, DATA, {"image-id": "1"})
    second = put_small(client, BUCKET, other, DATA[::-1], {"image-id": "2"})
    assert s3_put.checks_sha256(client, BUCKET, KEY, b"", content_type="x", metadata={})
    assert first.sent_etag is None and second.sent_etag is None
    assert confirm_object(client, BUCKET, KEY, first) == first.etag
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="images/put-test/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [KEY, other]
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == DATA
    assert s3.head_object(Bucket=BUCKET, Key=KEY)["Metadata"] == {"image-id": "1"}


def test_a_server_that_does_not_check_sha256_is_held_to_our_md5(seaweed, s3):
    """A server that stores what it gets without checking the SHA-256 (emulated by the
    proxy, which answers as such a server would) accepts the first upload's wrong SHA-256:
    every upload through that client then takes our MD5, and a body damaged on its way is
    caught by it (S3's ETag is not our MD5): never verified."""
    from pdata_sync.base.errors import PermanentError

    with FaultProxy(seaweed.endpoint) as proxy:
        proxy.set(Fault("unchecked", match=lambda method, path: method == "PUT", limit=1))
        client = client_for(proxy.url)
        stored = put_small(client, BUCKET, KEY, DATA, {})
        assert proxy.state.faults_fired == 1  # the wrong SHA-256 was accepted
        assert stored.sent_etag == hashlib.md5(DATA).hexdigest() == stored.etag
        assert confirm_object(client, BUCKET, KEY, stored) == stored.etag
        assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == DATA

        proxy.set(Fault("damaged-unchecked", match=lambda method, path: method == "PUT"))
        damaged_client = client_for(proxy.url)
        damaged = put_small(damaged_client, BUCKET, KEY, DATA, {})
        assert damaged.sent_etag == hashlib.md5(DATA).hexdigest() != damaged.etag
        with pytest.raises(PermanentError, match="not verified"):
            confirm_object(damaged_client, BUCKET, KEY, damaged)


def test_a_body_damaged_once_in_transit_is_refused_and_sent_again(seaweed, s3):
    with FaultProxy(seaweed.endpoint) as proxy:
        # the second PUT: the first (boto3) asks whether the server checks SHA-256
        proxy.set(Fault("corrupt-body", every=2, limit=1))
        stored = put_small(client_for(proxy.url, attempts=2), BUCKET, KEY, DATA, {})
        assert proxy.state.faults_fired == 1
    assert stored.etag == hashlib.md5(DATA).hexdigest()
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == DATA


def test_no_answer_is_transient_and_says_why(s3):
    with pytest.raises(Exception) as caught:
        put_small(client_for("http://127.0.0.1:9"), BUCKET, KEY, DATA, {})
    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert s3_code(caught.value) == ("PutObject", "")
    assert describe(caught.value) == "S3 PutObject failed: no answer: Connection refused"


def test_the_proxy_boto3_would_use_is_used(seaweed, s3, monkeypatch):
    """HTTP_PROXY from the environment, as boto3 takes it: the request goes through it."""
    with FaultProxy(seaweed.endpoint) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        put_small(client_for(seaweed.endpoint), BUCKET, KEY, DATA, {})
        # boto3 asks whether the server checks SHA-256, then obstore uploads
        assert [method for method, _ in proxy.state.log] == ["PUT", "PUT"]
    assert s3.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"] == len(DATA)


def test_an_unreadable_ca_bundle_is_named(seaweed, s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="AWS_CA_BUNDLE: cannot read .*missing.pem"):
        put_small(client_for(seaweed.endpoint), BUCKET, KEY, DATA, {})
