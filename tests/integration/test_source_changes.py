"""Files that change or cannot be read while a sync runs, against real SeaweedFS: detected,
retried or reported with the path, never stored torn, no multipart upload left open."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pdata_sync.archive.s3_client import make_client
from pdata_sync.base.config import parse_config
from pdata_sync.demo.generate import write_dicom
from pdata_sync.pipeline import uploader as uploader_module
from pdata_sync.pipeline.plan import PlannedImage
from pdata_sync.pipeline.uploader import FAILED, UPLOADED, BatchUploader
from tests.conftest import BUCKET

GUID = "33333333-3333-4333-8333-333333333333"


@pytest.fixture
def env(tmp_path, seaweed, monkeypatch):
    for key, value in seaweed.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(uploader_module, "SOURCE_CHANGE_PAUSE", 0.01)
    config = parse_config(
        {
            "clinic_id": "c-1",
            "pdata_root": str(tmp_path),
            "database": {"url": "sqlite:////unused.db"},
            "resolver": {"url": "http://127.0.0.1:9/"},
            "s3": {"bucket": BUCKET, "region": "us-east-1", "endpoint_url": seaweed.endpoint},
            "transfer": {"multipart_threshold_mb": 5, "part_size_mb": 5, "max_attempts": 2},
        }
    )
    s3 = seaweed.client()
    yield config, s3, tmp_path
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="images/3"):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])


def big_dicom(root: Path, image_id: int) -> Path:
    path = root / "P_1" / f"0000_{image_id}.dcm"
    write_dicom(
        path,
        rng=random.Random(image_id),
        clinic_id="c-1",
        patient_id=1,
        patient_name="X^Y",
        birth_date="19700101",
        image_id=image_id,
        modality="CT",
        rows=256,
        cols=256,
        frames=100,
    )  # 13 MB: three parts
    return path


def item(image_id: int) -> PlannedImage:
    return PlannedImage(
        f"P_1/0000_{image_id}.dcm", GUID, image_id, "CBCT", f"images/{GUID}/c-1_{image_id}_CBCT.dcm"
    )


def appender(path: Path, times: int):
    """A botocore hook that grows ``path`` while its first part is on the wire."""
    state = {"left": times}

    def hook(params, **kwargs):
        if params.get("PartNumber") == 1 and state["left"] > 0:
            state["left"] -= 1
            with open(path, "ab") as fh:
                fh.write(b"\0" * 1000)

    return hook


def open_uploads(s3) -> list:
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def test_file_growing_during_multipart_is_retried_and_lands_whole(env):
    config, s3, root = env
    path = big_dicom(root, 71)
    client = make_client(config.s3, config.transfer)
    client.meta.events.register("before-parameter-build.s3.UploadPart", appender(path, 1))
    outcome = BatchUploader(config, client).upload_batch([item(71)])[0]
    assert outcome.status == UPLOADED, outcome.reason
    stored = s3.get_object(Bucket=BUCKET, Key=item(71).key)["Body"].read()
    assert stored == path.read_bytes()  # the grown file, whole: nothing torn
    assert open_uploads(s3) == []


def test_file_that_keeps_changing_is_reported_failed_and_not_stored(env):
    config, s3, root = env
    path = big_dicom(root, 72)
    client = make_client(config.s3, config.transfer)
    client.meta.events.register("before-parameter-build.s3.UploadPart", appender(path, 99))
    outcome = BatchUploader(config, client).upload_batch([item(72)])[0]
    assert outcome.status == FAILED
    assert outcome.path == "P_1/0000_72.dcm"
    assert "changed while it was being uploaded" in outcome.reason
    assert "tried again next run" in outcome.reason
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"images/{GUID}/").get("KeyCount") == 0
    assert open_uploads(s3) == []


def test_small_file_changing_while_read_is_not_stored(env, monkeypatch):
    config, s3, root = env
    path = root / "P_1" / "0000_73.dcm"
    write_dicom(
        path,
        rng=random.Random(3),
        clinic_id="c-1",
        patient_id=1,
        patient_name="X^Y",
        birth_date="19700101",
        image_id=73,
        modality="IO",
        rows=32,
        cols=32,
    )
    real_open = open

    def growing_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if str(file) == str(path) and "b" in mode and "r" in mode:
            with real_open(path, "ab") as w:  # someone writes while we read
                w.write(b"\0")
        return fh

    monkeypatch.setattr("builtins.open", growing_open)
    outcome = BatchUploader(config, make_client(config.s3, config.transfer)).upload_batch(
        [item(73)]
    )[0]
    monkeypatch.undo()
    assert outcome.status == FAILED and "keeps changing" in outcome.reason
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"images/{GUID}/").get("KeyCount") == 0


def test_unreadable_file_is_failed_naming_it(env, monkeypatch):
    """Permission denied is the environment (the worker's rights), not bad input."""
    config, s3, root = env
    path = root / "P_1" / "0000_74.dcm"
    write_dicom(
        path,
        rng=random.Random(4),
        clinic_id="c-1",
        patient_id=1,
        patient_name="X^Y",
        birth_date="19700101",
        image_id=74,
        modality="IO",
        rows=32,
        cols=32,
    )
    path.chmod(0)
    real_open = open

    def denied(file, mode="r", *args, **kwargs):
        # root ignores file modes; make open() answer as it does for the worker's user
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    outcome = BatchUploader(config, make_client(config.s3, config.transfer)).upload_batch(
        [item(74)]
    )[0]
    monkeypatch.undo()
    assert outcome.status == FAILED
    assert "Permission denied" in outcome.reason and "0000_74.dcm" in outcome.reason
