"""De-identification, tag by tag, over pydicom's test corpus and a generated clinic: after
it, no attribute Table E.1-1 (Basic Profile) says to remove, empty or replace keeps its
original value (dates are shifted under the Modified Dates option; times are kept by it),
private attributes are gone, the pixel data is byte-identical, UIDs are consistent within
a project across runs and differ between projects."""

from __future__ import annotations

import copy
import io
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from pdata_sync.deid import Deidentifier, ProjectKey, basic_profile, held_back
from tests.conftest import make_clinic

GUID = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
OTHER = "a1b2c3d4-0000-4000-8000-000000000001"


def corpus() -> list[Path]:
    files = []
    for name in sorted(set(get_testdata_files("*.dcm"))):
        try:
            ds = pydicom.dcmread(name)
            ds.copy()
        except Exception:  # noqa: BLE001 - files pydicom itself cannot read whole
            continue
        files.append(Path(name))
    return files


CORPUS = corpus()


def flatten(ds: Dataset, path: tuple = ()) -> dict[tuple, pydicom.DataElement]:
    """Every element, nested ones too, by its path of (tag, item index) steps."""
    out = {}
    for elem in ds:
        here = (*path, int(elem.tag))
        out[here] = elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(flatten(item, (*here, i)))
    return out


def parent_gone(after: dict, path: tuple) -> bool:
    """True if an enclosing sequence item no longer exists (removed or emptied)."""
    for cut in range(2, len(path), 2):
        if path[:cut] not in after and path[: cut - 1] not in after:
            return True
        seq = after.get(path[: cut - 1])
        if seq is None or len(seq.value) <= path[cut - 1]:
            return True
    return False


def shifted(value: str, days: int) -> str:
    day = datetime.strptime(value[:8], "%Y%m%d").date()
    return (day.fromordinal(day.toordinal() - days)).strftime("%Y%m%d") + value[8:]


def check(original: Dataset, result: Dataset, key: ProjectKey) -> int:
    """Assert the profile on every attribute of ``original``; return how many were checked."""
    table = basic_profile()
    before, after = flatten(original), flatten(result)
    days = key.date_shift(GUID).days
    checked = 0
    for path, elem in before.items():
        tag = path[-1]
        if elem.tag.is_private:
            assert path not in after, f"private {elem.tag} kept"
            continue
        code = table.code(tag)
        if code is None or parent_gone(after, path):
            continue
        value = elem.value
        if value in (None, "", b"") or (elem.VR == "SQ" and not value):
            continue  # nothing to protect
        checked += 1
        if tag in (0x00100010, 0x00100020) and len(path) == 1:
            assert str(after[path].value) == key.pseudonym(GUID)
            continue
        if code == "X":
            assert path not in after, f"{elem.tag} {elem.name} ({code}) kept"
            continue
        if path not in after:
            continue  # removed: nothing kept
        new = after[path].value
        if elem.VR == "TM":
            continue  # kept under the Modified Dates option (a whole-day shift)
        if elem.VR in ("DA", "DT") and tag != 0x00100030:
            olds = list(value) if elem.VM > 1 else [value]
            news = list(new) if after[path].VM > 1 else [new]
            for old, moved in zip(olds, news, strict=False):
                if str(old).strip() and str(old)[:8].isdigit():
                    assert str(moved) == shifted(str(old).strip(), days), (elem.name, old, moved)
            continue
        assert new != value, f"{elem.tag} {elem.name} ({code}) kept its value {value!r}"
    return checked


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_every_attribute_of_the_profile_is_handled(path):
    key = ProjectKey.of("s3cret", "caries-2027")
    original = pydicom.dcmread(path)
    result = Deidentifier(key).deidentify(copy.deepcopy(original), GUID)
    check(original, result, key)
    if "PixelData" in original:
        assert result.PixelData == original.PixelData  # byte for byte
    assert result.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in result.DeidentificationMethodCodeSequence] == [
        "113100",
        "113107",
    ]
    # it still writes as DICOM, and reads back
    out = io.BytesIO()
    result.save_as(out)
    again = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert again.PatientID == key.pseudonym(GUID)


def test_the_corpus_is_the_real_one():
    """The parametrised test above runs over pydicom's corpus, not an empty list, and the
    profile's table is the library's (hundreds of attributes), not a retyped excerpt."""
    assert len(CORPUS) > 50
    table = basic_profile()
    assert len(table.codes) > 500
    assert table.code(0x00100010) == "Z"  # Patient's Name
    assert table.code(0x00080018) == "U"  # SOP Instance UID
    assert table.code(0x50001234) == "X"  # curve data, by its range


def test_a_generated_clinic_tag_by_tag(tmp_path):
    clinic = make_clinic(tmp_path / "clinic", patients=8)
    key = ProjectKey.of("s3cret", "caries-2027")
    checked = 0
    for entry in clinic.expected:
        original = pydicom.dcmread(Path(clinic.pdata_root, entry["path"]))
        result = Deidentifier(key).deidentify(copy.deepcopy(original), GUID)
        checked += check(original, result, key)
        assert result.PixelData == original.PixelData
        for value in clinic.phi:
            assert value not in str(result), value
    assert len(clinic.expected) > 5 and checked > 5 * len(clinic.expected)


def test_uids_are_consistent_within_a_project_and_differ_between_projects():
    ds = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0])
    one = ProjectKey.of("s3cret", "p1")
    a = Deidentifier(one).deidentify(copy.deepcopy(ds), GUID)
    b = Deidentifier(ProjectKey.of("s3cret", "p1")).deidentify(copy.deepcopy(ds), GUID)
    c = Deidentifier(ProjectKey.of("s3cret", "p2")).deidentify(copy.deepcopy(ds), GUID)
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a[name].value == b[name].value  # another run, the same UID
        assert a[name].value != c[name].value  # another project, another UID
        assert a[name].value.startswith("2.25.") and len(a[name].value) <= 64
    assert a.PatientID == b.PatientID != c.PatientID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    # one study's instances keep one study UID; another patient gets another shift
    assert one.date_shift(GUID) != one.date_shift(OTHER)
    assert one.date_shift(GUID).days >= 1


def test_burned_in_annotations_are_held_back():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.3"
    assert held_back(ds) is None
    ds.BurnedInAnnotation = "YES"
    assert "burned-in" in held_back(ds)
    sc = Dataset()
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert "secondary capture" in held_back(sc)
    sc.BurnedInAnnotation = "NO"
    assert held_back(sc) is None
