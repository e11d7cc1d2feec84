"""The lean header scan against pydicom, its reference: wherever the scan answers, the
catalog fields and the pixel-data defect are exactly what pydicom's reading gives; where
it cannot be sure, it declines and pydicom reads the file."""

import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pdata_sync.base.errors import BadInputError
from pdata_sync.source.dicom_meta import _read_with_pydicom, read_header
from pdata_sync.source.dicom_scan import scan

CORPUS = sorted(
    p
    for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*")
    if p.is_file() and p.stat().st_size < 8 * 1024 * 1024
)


def reference(data: bytes):
    """pydicom's answer: the header, or the bad-input message."""
    try:
        return _read_with_pydicom(io.BytesIO(data))
    except BadInputError as exc:
        return f"BadInputError: {exc}"


def ours(source):
    try:
        return read_header(source)
    except BadInputError as exc:
        return f"BadInputError: {exc}"


def saved(ds: Dataset, implicit: bool = False) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def test_corpus_answers_equal_pydicom(tmp_path: Path):
    answered = 0
    for path in CORPUS:
        data = path.read_bytes()
        expected = reference(data) if data else "BadInputError: empty file"
        assert ours(data) == expected, path.name
        assert ours(path) == expected, path.name
        answered += scan(data) is not None
    # the scan must carry the plain cases, or it is no use (not a speed test: a count)
    assert answered >= 40, answered


def test_plain_files_are_scanned(dicom_file: Path):
    """The files a clinic has most (explicit and implicit VR little endian, compressed
    pixel data, sequences in the header) take the lean path."""
    names = ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "rtplan.dcm"]
    for name in names:
        data = pydicom.data.get_testdata_file(name, read=False)
        assert scan(Path(data).read_bytes()) is not None, name
    assert scan(dicom_file.read_bytes()) is not None


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "rtplan.dcm"]
)
def test_every_truncation_equals_pydicom(name: str):
    """Cut short anywhere in the header and in the pixel data's first bytes and last
    bytes: the same header, the same defect, or the same error."""
    data = Path(pydicom.data.get_testdata_file(name, read=False)).read_bytes()
    found = scan(data)
    assert found is not None
    end_of_header = (found.pixel_offset or len(data)) + 32
    cuts = list(range(0, min(end_of_header, len(data))))
    cuts += list(range(max(0, len(data) - 64), len(data)))
    for cut in cuts:
        part = data[:cut]
        expected = reference(part) if part else "BadInputError: empty file"
        assert ours(part) == expected, (name, cut)


def test_unusual_values_go_to_pydicom(dicom_file: Path):
    base = pydicom.dcmread(dicom_file)
    cases = {}

    ds = copy.deepcopy(base)
    ds.Modality = ["IO", "PX"]  # two values: pydicom's text for it is its own
    cases["multi-valued"] = saved(ds)

    ds = copy.deepcopy(base)
    ds["Modality"].VR = "LO"  # written with another VR than the dictionary's
    cases["other VR"] = saved(ds)

    ds = copy.deepcopy(base)
    ds.AcquisitionDate = ""
    ds.ContentDate = "20200102"
    cases["empty first date"] = saved(ds)

    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = ""
    cases["empty SOP UID"] = saved(ds)

    ds = copy.deepcopy(base)
    del ds.SOPInstanceUID
    cases["no SOP UID"] = saved(ds)

    ds = copy.deepcopy(base)
    item = Dataset()
    item.SOPInstanceUID = "1.2.3.4"  # inside a sequence: not the image's own
    item.Modality = "XX"
    ds.ReferencedImageSequence = Sequence([item])
    cases["sequence"] = saved(ds)
    cases["sequence, implicit VR"] = saved(ds, implicit=True)

    ds = copy.deepcopy(base)
    ds.StudyInstanceUID = "1.2.3\x00"
    ds.Modality = "I\u00d6"  # not ASCII
    cases["padding and non-ASCII"] = saved(ds)

    for label, data in cases.items():
        assert ours(data) == reference(data), label
    assert scan(cases["multi-valued"]) is None
    assert scan(cases["other VR"]) is None
    assert scan(cases["sequence"]) is not None
    assert scan(cases["sequence, implicit VR"]) is not None
    assert read_header(cases["sequence"]).sop_instance_uid == base.SOPInstanceUID
    assert read_header(cases["empty first date"]).acquisition_date == "20200102"


def test_undefined_length_sequences_are_skipped(dicom_file: Path):
    base = pydicom.dcmread(dicom_file)
    inner = Dataset()
    inner.CodeValue = "A"
    item = Dataset()
    item.SOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    base.ReferencedImageSequence = Sequence([item, item])
    base["ReferencedImageSequence"].is_undefined_length = True
    for each in (item, inner):
        each.is_undefined_length_sequence_item = True
    base["ReferencedImageSequence"].value[0][
        "PurposeOfReferenceCodeSequence"
    ].is_undefined_length = True
    for implicit in (False, True):
        data = saved(base, implicit=implicit)
        assert scan(data) is not None
        assert ours(data) == reference(data)
        assert read_header(data).sop_instance_uid == base.SOPInstanceUID


def test_long_header_read_from_a_file(tmp_path: Path, dicom_file: Path):
    """A header longer than the scan reads from a file goes to pydicom, same answer."""
    base = pydicom.dcmread(dicom_file)
    base.ImageComments = "x" * 100_000
    data = saved(base)
    path = tmp_path / "long.dcm"
    path.write_bytes(data)
    assert ours(path) == reference(data)
    assert read_header(path).modality == "IO"
