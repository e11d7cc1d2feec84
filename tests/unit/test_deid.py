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
from pydicom.dataset import Dataset

from pdata_sync.research.deid import Deidentifier, ProjectKey, basic_profile, held_back
from tests.conftest import make_clinic

GUID = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
OTHER = "a1b2c3d4-0000-4000-8000-000000000001"
TEST_SECRET = "kq3R7vYb2XwPz9LmN4tHc8JdF6sAe1GuV5oWiQy0TnB"  # 43 base64 characters


# pydicom's own test files, shipped with it. Not get_testdata_files: it also tries to
# download pydicom-data's files (16 s of failed DNS look-ups at every collection here, and
# another corpus wherever the download works).
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def get_testdata_files(pattern: str) -> list[str]:
    return [str(p) for p in sorted(PYDICOM_FILES.glob(pattern))]


def corpus() -> list[Path]:
    files = []
    for name in get_testdata_files("*.dcm"):
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
    key = ProjectKey.of(TEST_SECRET, "caries-2027")
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
    key = ProjectKey.of(TEST_SECRET, "caries-2027")
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
    one = ProjectKey.of(TEST_SECRET, "p1")
    a = Deidentifier(one).deidentify(copy.deepcopy(ds), GUID)
    b = Deidentifier(ProjectKey.of(TEST_SECRET, "p1")).deidentify(copy.deepcopy(ds), GUID)
    c = Deidentifier(ProjectKey.of(TEST_SECRET, "p2")).deidentify(copy.deepcopy(ds), GUID)
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


# --- around the dataset: the preamble and the file meta group (issue 33) -----------------

NAME = "DOE^JANE"


def part10_with_phi_outside_the_dataset() -> bytes:
    """A Part 10 file whose preamble and file meta carry a name and a birth date."""
    ds = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0])
    ds.preamble = b"PATIENT: DOE^JANE DOB 19700101".ljust(128, b"\0")
    ds.file_meta.SourceApplicationEntityTitle = "JANEDOE"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.826.0.1.3680043.2.1143"
    ds.file_meta.PrivateInformation = b"DOE^JANE 19700101"
    ds.file_meta.SendingApplicationEntityTitle = "JANEDOE"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_preamble_is_zeroed_and_the_file_meta_rebuilt():
    raw = part10_with_phi_outside_the_dataset()
    assert b"DOE^JANE" in raw[:128] and b"JANEDOE" in raw  # the file as it arrives
    key = ProjectKey.of(TEST_SECRET, "caries-2027")
    ds = Deidentifier(key).deidentify(pydicom.dcmread(io.BytesIO(raw)), GUID)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    written = out.getvalue()
    assert written[:128] == b"\0" * 128 and written[128:132] == b"DICM"
    for leak in (b"DOE^JANE", b"JANEDOE", b"19700101", b"1.2.826.0.1.3680043.2.1143"):
        assert leak not in written, leak
    meta = pydicom.dcmread(io.BytesIO(written)).file_meta
    assert sorted(int(e.tag) for e in meta) == [
        0x00020000,  # group length
        0x00020001,  # version
        0x00020002,  # media storage SOP class
        0x00020003,  # media storage SOP instance (de-identified)
        0x00020010,  # transfer syntax
        0x00020012,  # implementation class
        0x00020013,  # implementation version name
    ]
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPInstanceUID.startswith("2.25.")
    assert meta.TransferSyntaxUID == pydicom.dcmread(io.BytesIO(raw)).file_meta.TransferSyntaxUID


def test_elements_of_other_groups_inside_the_dataset_do_not_survive():
    """Command (0000) and file meta (0002) elements placed inside the dataset, and trailing
    padding, are not the image's attributes: none of them is written."""
    ds = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0])
    ds.add_new(0x00000901, "AT", 0x00100010)  # Offending Element, a command field
    ds.add_new(0x00100000, "UL", 4)  # a group length
    ds.add_new(0xFFFCFFFC, "OB", b"DOE^JANE")  # data set trailing padding
    key = ProjectKey.of(TEST_SECRET, "caries-2027")
    Deidentifier(key).deidentify(ds, GUID)
    assert not [e.tag for e in ds if e.tag.group in (0x0000, 0x0002, 0xFFFC)]
    assert 0x00100000 not in ds
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert b"DOE^JANE" not in out.getvalue()


# --- sequences: every sequence attribute of Table E.1-1 (issue 33) -------------------------

INTRA_ORAL = "1.2.840.10008.5.1.4.1.1.1.3"  # Digital Intra-Oral X-Ray Image Storage


def table_sequences() -> dict[int, str]:
    from pydicom.datadict import dictionary_VR

    out = {}
    for tag, code in basic_profile().codes.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr == "SQ":
            out[tag] = code
    return out


SEQUENCES = table_sequences()


def with_sequence(tag: int, sop_class: str) -> Dataset:
    """A dataset holding the sequence ``tag`` with one item full of identifying values."""
    item = Dataset()
    item.CodeValue = "JANEDOE1"
    item.CodingSchemeDesignator = "99JANE"
    item.CodeMeaning = "Doe Jane"
    item.PersonName = NAME
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1143.777"
    item.add_new(0x00091010, "LO", "JANE private")
    inner = Dataset()
    inner.InstitutionName = "Praxis Doe"
    item.PersonIdentificationCodeSequence = [inner]
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.1"
    ds.add_new(tag, "SQ", [item])
    return ds


def originals_left(ds: Dataset) -> list[str]:
    text = "\n".join(str(e.value) for e in flatten(ds).values() if e.VR != "SQ")
    return [v for v in ("JANE", "Jane", "Doe", "1.2.826.0.1.3680043.2.1143.777") if v in text]


@pytest.mark.parametrize("sop_class", [INTRA_ORAL, "1.2.3.4.5.6"], ids=["intra-oral", "unknown"])
@pytest.mark.parametrize("tag", sorted(SEQUENCES), ids=lambda t: f"{t:08X}")
def test_every_sequence_of_the_table_ends_as_its_code_allows(tag, sop_class):
    code = SEQUENCES[tag]
    key = ProjectKey.of(TEST_SECRET, "caries-2027")
    ds = Deidentifier(key).deidentify(with_sequence(tag, sop_class), GUID)
    allowed = {
        "X": {"absent"},
        "Z": {"empty"},
        "D": {"dummy"},
        "X/Z": {"absent", "empty"},
        "X/D": {"absent", "dummy"},
        "Z/D": {"empty", "dummy"},
        "X/Z/D": {"absent", "empty", "dummy"},
        "X/Z/U*": {"absent", "empty", "items"},
    }[code]
    if tag not in ds:
        got = "absent"
    elif len(ds[tag].value) == 0:
        got = "empty"
    else:
        got = "dummy" if code != "X/Z/U*" else "items"
        assert len(ds[tag].value) == 1
        item = ds[tag].value[0]
        assert not [e for e in item if e.tag.is_private]
        assert item.ReferencedSOPInstanceUID == key.uid("1.2.826.0.1.3680043.2.1143.777")
    assert got in allowed, (code, got)
    if sop_class != INTRA_ORAL and code in ("X/D", "X/Z/D", "X/Z", "X/Z/U*"):
        assert got == "absent"  # no IOD known: the code's X applies
    if got != "items":  # a walked item keeps what the table does not list (Code Meaning)
        assert originals_left(ds) == []
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True)
    assert b"DOE^JANE" not in out.getvalue()
    assert b"1.2.826.0.1.3680043.2.1143.777" not in out.getvalue()


@pytest.mark.parametrize(
    ("keyword", "sop_class", "expected"),
    [
        # X/D, type 3 in the intra-oral IOD: removed
        ("OperatorIdentificationSequence", INTRA_ORAL, "absent"),
        # X/D, type 1 in the 12-lead ECG IOD: one dummy item
        ("WaveformAnnotationSequence", "1.2.840.10008.5.1.4.1.1.9.1.1", "dummy"),
        # X/Z, type 2 in the DX IOD: emptied
        ("AcquisitionContextSequence", "1.2.840.10008.5.1.4.1.1.1.1", "empty"),
        # X/Z/D, type 2 in one IOD, 1C in another
        ("ReferencedPerformedProcedureStepSequence", "1.2.840.10008.5.1.4.1.1.78.6", "empty"),
        ("ReferencedPerformedProcedureStepSequence", "1.2.840.10008.5.1.4.1.1.1.1", "dummy"),
        # X/Z/U*, type 1 in an IOD: kept, its UIDs replaced
        ("SourceImageSequence", "1.2.840.10008.5.1.4.1.1.77.1.5.7", "items"),
        # D: one dummy item whatever the IOD
        ("VerifyingObserverSequence", "1.2.840.10008.5.1.4.1.1.88.11", "dummy"),
    ],
)
def test_a_combined_code_follows_the_attribute_type_in_the_iod(keyword, sop_class, expected):
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    key = ProjectKey.of(TEST_SECRET, "caries-2027")
    ds = Deidentifier(key).deidentify(with_sequence(tag, sop_class), GUID)
    got = "absent" if tag not in ds else "empty" if not ds[tag].value else "dummy"
    if expected == "items":
        assert got == "dummy" and len(ds[tag].value) == 1
        item = ds[tag].value[0]
        # walked, not dummied: the item's own codes applied, what the table does not list
        # (Code Meaning) kept
        assert item.ReferencedSOPInstanceUID == key.uid("1.2.826.0.1.3680043.2.1143.777")
        assert "PersonName" not in item or str(item.PersonName) != NAME
        assert item.CodeMeaning == "Doe Jane"
    else:
        assert got == expected
        assert originals_left(ds) == []


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (" ", "empty"),
        ("s3cret", "6 base64 characters, 256 bits need 43"),
        ("a-research-secret-for-tests", "27 base64 characters"),
        ("0123456789abcdef" * 2, "32 hex digits, 256 bits need 64"),
        ("a" * 64, "only 1 different"),  # long enough, and one character: not a secret
        ("z" * 64, "only 1 different"),
        ("correct horse battery staple!", "29 bytes, 256 bits need 32"),
    ],
)
def test_a_weak_research_secret_is_refused(secret, problem):
    from pdata_sync.research.deid import secret_problem

    assert problem in (secret_problem(secret) or "ok")
    with pytest.raises(ValueError, match="too weak"):
        ProjectKey.of(secret, "caries-2027")


@pytest.mark.parametrize(
    "secret",
    [
        TEST_SECRET,
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # 64 hex
        "correct horse battery staple, twice!",  # 36 bytes of text
    ],
)
def test_a_strong_research_secret_is_accepted(secret):
    from pdata_sync.research.deid import secret_problem

    assert secret_problem(secret) is None
    assert ProjectKey.of(secret, "p").pseudonym(GUID).startswith("RP")
