"""Folder and file names of PDATA, of any id width, and the scan's skip counting."""

from pathlib import Path

import pytest

from pdata_sync.base.errors import ConfigError
from pdata_sync.source.pdata import (
    SKIP_NOT_IMAGE_FILE,
    SKIP_NOT_PATIENT_FOLDER,
    PatientFolder,
    check_root,
    parse_image_file,
    parse_patient_folder,
    scan_images,
    scan_patient_folders,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("P_1", 1),
        ("P_00001234", 1234),
        ("P_000000000042", 42),
        ("P_1234567", 1234567),
        ("p_77", 77),  # Windows shares are case-insensitive
        ("P_", None),
        ("P_abc", None),
        ("P_12a", None),
        ("P_0", None),
        ("P_00000000", None),
        ("X_12", None),
        ("P_12 ", None),
        ("TEMP", None),
    ],
)
def test_patient_folder_names(name, expected):
    assert parse_patient_folder(name) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("0000_123.dcm", 123),
        ("0000_000123.dcm", 123),
        ("0000_00000000123.DCM", 123),
        ("1_2.dcm", 2),
        ("0001_5.dcm", 5),
        ("0000_12.jpg", None),
        ("0000_.dcm", None),
        ("_12.dcm", None),
        ("0000_12.dcm.bak", None),
        ("desktop.ini", None),
        ("0000_0.dcm", None),
    ],
)
def test_image_file_names(name, expected):
    assert parse_image_file(name) == expected


def test_scan_counts_junk_and_lists_images(tmp_path: Path):
    (tmp_path / "P_0001").mkdir()
    (tmp_path / "P_0001" / "0000_10.dcm").write_bytes(b"x")
    (tmp_path / "P_0001" / "0000_011.dcm").write_bytes(b"yy")
    (tmp_path / "P_0001" / "Thumbs.db").write_bytes(b"z")
    (tmp_path / "P_0001" / "sub").mkdir()
    (tmp_path / "P_22").mkdir()
    (tmp_path / "P_abc").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "P_5").write_text("a file named like a folder")
    (tmp_path / "P_6").symlink_to(tmp_path / "P_0001")  # another patient's folder
    (tmp_path / "P_7").symlink_to(tmp_path / "gone")  # a share that went away
    (tmp_path / "P_0001" / "0000_12.dcm").symlink_to(tmp_path / "notes.txt")
    (tmp_path / "P_0001" / "0000_13.dcm").mkdir()

    folders, skipped, problems = scan_patient_folders(tmp_path)
    assert [(f.patient_id, f.name) for f in folders] == [(1, "P_0001"), (22, "P_22")]
    assert skipped[SKIP_NOT_PATIENT_FOLDER] == 2
    assert [(p.path, p.reason, p.environment) for p in problems] == [
        ("P_5", "not a patient folder: a file", True),
        ("P_6", "not a patient folder: a symbolic link (not followed)", True),
        ("P_7", "not a patient folder: a dangling symbolic link", True),
    ]

    images, skipped_files, problems = scan_images(tmp_path, folders)
    assert [(i.patient_id, i.image_id, i.rel_path, i.size) for i in images] == [
        (1, 11, "P_0001/0000_011.dcm", 2),
        (1, 10, "P_0001/0000_10.dcm", 1),
    ]
    assert skipped_files[SKIP_NOT_IMAGE_FILE] == 2
    assert [(p.path, p.reason, p.environment) for p in problems] == [
        ("P_0001/0000_12.dcm", "not an image file: a symbolic link (not followed)", True),
        ("P_0001/0000_13.dcm", "not an image file: a folder", True),
    ]


def test_duplicate_image_id_is_reported(tmp_path: Path):
    (tmp_path / "P_1").mkdir()
    (tmp_path / "P_1" / "0000_7.dcm").write_bytes(b"a")
    (tmp_path / "P_1" / "0000_007.dcm").write_bytes(b"b")
    images, _, problems = scan_images(tmp_path, [PatientFolder(1, "P_1")])
    assert len(images) == 1
    assert len(problems) == 1 and "duplicate imageId 7" in problems[0].reason
    assert not problems[0].environment  # bad input: rejected


def test_missing_root_is_a_config_error_naming_the_path(tmp_path: Path):
    with pytest.raises(ConfigError, match="does-not-exist"):
        check_root(tmp_path / "does-not-exist")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        check_root(tmp_path / "file")


def test_unreadable_root_is_a_config_error_naming_it(tmp_path: Path, monkeypatch):
    import os

    real_scandir = os.scandir

    def denied(path="."):
        # root ignores file modes; answer as the OS does for the worker's user
        if str(path) == str(tmp_path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(ConfigError) as err:
        check_root(tmp_path)
    assert str(tmp_path) in str(err.value) and "not readable" in str(err.value)


def test_unlistable_patient_folder_is_reported_and_the_rest_goes_on(tmp_path: Path, monkeypatch):
    import os

    for name in ("P_1", "P_2"):
        (tmp_path / name).mkdir()
        (
            tmp_path / name / "0000_5.dcm" if name == "P_1" else tmp_path / name / "0000_6.dcm"
        ).write_bytes(b"x")
    real_scandir = os.scandir

    def denied(path="."):
        if str(path).endswith("P_1"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    images, _, problems = scan_images(tmp_path, [PatientFolder(1, "P_1"), PatientFolder(2, "P_2")])
    assert [i.rel_path for i in images] == ["P_2/0000_6.dcm"]
    assert [(p.path, p.reason, p.environment) for p in problems] == [
        ("P_1", "folder cannot be listed: Permission denied", True)  # failed, not rejected
    ]
