"""DICOM header reading without pixels, bad files, and the ETags S3 would compute."""

import hashlib
import random
from pathlib import Path

import pytest

from pdata_sync.base.errors import BadInputError
from pdata_sync.source.dicom_meta import UNKNOWN, file_digests, multipart_etag, read_header


def test_header_fields(dicom_file: Path):
    for source in (dicom_file, dicom_file.read_bytes()):
        h = read_header(source)
        assert h.modality == "IO"
        assert h.sop_instance_uid.startswith("2.25.") or h.sop_instance_uid.count(".") > 3
        assert h.study_instance_uid != h.series_instance_uid
        assert len(h.acquisition_date) == 8 and h.acquisition_date.isdigit()


def test_missing_fields_say_unknown(tmp_path: Path, dicom_file: Path):
    import pydicom

    ds = pydicom.dcmread(dicom_file)
    del ds.AcquisitionDate, ds.StudyDate, ds.Modality
    ds.save_as(tmp_path / "x.dcm")
    h = read_header(tmp_path / "x.dcm")
    assert h.acquisition_date == UNKNOWN and h.modality == UNKNOWN


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"this is not a DICOM file\n" * 20, "not a DICOM file"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00", "DICOM"),
    ],
)
def test_bad_files_are_bad_input(data, message):
    with pytest.raises(BadInputError, match=message):
        read_header(data)


def test_expected_etag_single_and_multipart(tmp_path: Path):
    data = random.Random(3).randbytes(11 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert (
        file_digests(path, len(data), threshold=len(data), part_size=4096)[0]
        == hashlib.md5(data).hexdigest()
    )
    parts = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    expected = multipart_etag([hashlib.md5(p).digest() for p in parts])
    assert file_digests(path, len(data), threshold=4096, part_size=4096)[0] == expected
    assert expected.endswith("-3")


def test_part_digests_agree_with_the_streaming_hashes(tmp_path):
    import hashlib
    import random

    from pdata_sync.source.dicom_meta import multipart_etag, part_digests

    path = tmp_path / "f.bin"
    for size in (5 * 1024 * 1024, 5 * 1024 * 1024 + 1, 12 * 1024 * 1024 + 7):
        data = random.Random(size).randbytes(size)
        path.write_bytes(data)
        sha, parts = part_digests(path, 5 * 1024 * 1024)
        assert sha == hashlib.sha256(data).hexdigest()
        assert len(parts) == -(-size // (5 * 1024 * 1024))
        assert parts[-1][1] == hashlib.sha256(data[(len(parts) - 1) * 5 * 1024 * 1024 :]).digest()
        etag = multipart_etag([md5 for md5, _ in parts])
        assert (etag, sha) == file_digests(path, size, 4 * 1024 * 1024, 5 * 1024 * 1024)


def test_pixel_data_cut_short_is_a_defect_not_a_rejection(dicom_file: Path):
    data = dicom_file.read_bytes()
    assert read_header(data).defect is None and read_header(dicom_file).defect is None
    short = read_header(data[:-100])
    assert short.modality == "IO"  # still read: the file is archived byte for byte
    assert short.defect == "pixel data cut short: 412 of 512 bytes"
    # cut inside the pixel element's own header: pydicom cannot read the header either
    with pytest.raises(BadInputError, match="damaged DICOM header"):
        read_header(data[: len(data) - 512 - 2])


@pytest.mark.parametrize("implicit", [False, True])
def test_compressed_frames_without_their_end_marker_are_a_defect(tmp_path, dicom_file, implicit):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import ImplicitVRLittleEndian, JPEGBaseline8Bit

    ds = pydicom.dcmread(dicom_file)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x11" * 300 + b"\xff\xd9"])
    if implicit:  # the encoding pydicom detects, not only the one the header names
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.PixelData = b"\x00" * 512
    path = tmp_path / "c.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert read_header(data).defect is None
    cut = read_header(data[:-40]).defect
    assert cut is not None and "cut short" in cut
