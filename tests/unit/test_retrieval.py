"""Retrieval by patientGuid (moto): downloads never overwrite one object with another."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from pdata_sync.archive.retrieval import list_patient_images
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import ConfigError

G = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="dental-images")
        yield client


def test_downloads_get_one_file_per_object_never_overwriting(s3, tmp_path):
    bodies = {
        f"images/{G}/x/a.dcm": b"nested",
        f"images/{G}/a.dcm": b"top",
        f"images/{G}/A.dcm": b"upper",  # the same file on a case-insensitive file system
        f"images/{G}/c-1_7_OPG.dcm": b"plain",
    }
    for key, body in bodies.items():
        s3.put_object(Bucket="dental-images", Key=key, Body=body)
    found = list_patient_images(
        s3, S3Config(bucket="dental-images"), G, download_dir=tmp_path / "dl"
    )
    paths = {e["key"]: e["path"] for e in found}
    assert len({p.lower() for p in paths.values()}) == len(bodies)
    for key, path in paths.items():
        with open(path, "rb") as fh:
            assert fh.read() == bodies[key], key
    assert paths[f"images/{G}/c-1_7_OPG.dcm"].endswith("/c-1_7_OPG.dcm")  # plain names kept


def test_a_guid_with_a_trailing_newline_is_refused_before_s3(s3):
    with pytest.raises(ConfigError, match="patient GUID refused"):
        list_patient_images(s3, S3Config(bucket="dental-images"), G + "\n")
