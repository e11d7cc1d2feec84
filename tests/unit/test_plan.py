"""Planning: which file goes under which key, and how images are packed into batches."""

from collections import Counter

from pdata_sync.base.config import DEFAULT_KEY_TEMPLATE
from pdata_sync.pipeline.plan import (
    NOTE_NO_MEDIA_ROW,
    SKIP_MEDIA_DELETED,
    PlannedImage,
    build_plan,
    guids_per_patient,
    make_batches,
    resolve_patients,
)
from pdata_sync.source.pdata import ImageFile
from pdata_sync.source.sidexis_db import MediaRow

G1 = "11111111-1111-4111-8111-111111111111"
G2 = "22222222-2222-4222-8222-222222222222"


def img(pid, iid):
    return ImageFile(pid, iid, f"P_{pid}/0000_{iid}.dcm", 10, 0)


def test_guids_per_patient_dedupes_and_drops_unresolved():
    cards = {1: ["A", "B"], 2: ["C"], 3: ["D", "E"]}
    mapping = {"A": G1, "B": G1, "D": G1, "E": G2}
    assert guids_per_patient(cards, mapping) == {1: [G1], 3: [G1, G2]}


def test_resolve_patients_sorts_resolved_failed_and_unknown():
    cards = {1: ["A"], 2: ["B"], 3: ["C"], 4: ["D", "E"]}
    result = resolve_patients(cards, {"A": G1, "E": G2}, {"B": "resolver 500", "D": "timeout"})
    assert result.guids == {1: [G1], 4: [G2]}
    assert result.failed == {2: "patientGuid not resolved: resolver 500",
                             4: "patientGuid not resolved: timeout"}  # fmt: skip
    assert result.unresolved == 1  # patient 3: the resolver does not know C
    images = [img(1, 10), img(2, 20), img(3, 30), img(4, 40)]
    assert [i.image_id for i in result.wanted(images)] == [10, 20, 40]
    assert result.media_ids(result.wanted(images)) == [10, 40]  # no names for failed ones


def test_plan_images_under_each_guid_and_reports_media_cases():
    plan = build_plan(
        images=[img(1, 10), img(1, 11), img(1, 12), img(3, 30), img(4, 40)],
        patient_guids={1: [G1], 3: [G1, G2]},
        failed_patients={4: "patientGuid not resolved: resolver HTTP 503"},
        media={10: MediaRow("OPG", False), 11: MediaRow("x", True), 30: MediaRow(None, False)},
        clinic_id="c-1",
        key_template=DEFAULT_KEY_TEMPLATE,
    )
    keys = [p.key for p in plan.images]
    assert keys == [
        f"images/{G1}/c-1_10_OPG.dcm",
        f"images/{G1}/c-1_12_unnamed.dcm",
        f"images/{G1}/c-1_30_unnamed.dcm",
        f"images/{G2}/c-1_30_unnamed.dcm",
    ]
    assert plan.skipped == Counter({SKIP_MEDIA_DELETED: 1})
    assert [(n.path, n.reason) for n in plan.notes] == [("P_1/0000_12.dcm", NOTE_NO_MEDIA_ROW)]
    assert [f.path for f in plan.failed] == ["P_4/0000_40.dcm"]


def planned(guid, n):
    return [PlannedImage(f"p/{guid}/{i}", guid, i, None, f"k/{guid}/{i}") for i in range(n)]


def test_batches_bounded_and_keep_patients_together():
    guids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(30)]
    images = [im for i, g in enumerate(guids) for im in planned(g, 1 + i % 7)]
    batches = make_batches(images, 20)
    assert sorted(im.key for b in batches for im in b) == sorted(im.key for im in images)
    assert all(0 < len(b) <= 20 for b in batches)
    # a patient with <= 20 images is never split over two batches
    for g in guids:
        assert sum(1 for b in batches if any(im.patient_guid == g for im in b)) == 1


def test_big_patient_is_split():
    batches = make_batches(planned(G1, 1200), 500)
    assert [len(b) for b in batches] == [500, 500, 200]


def test_a_media_row_of_another_patient_is_a_conflict_not_uploaded():
    """MediaBase.PatientId says the image belongs to patient 8 while the file sits in P_7:
    uploading it under either patient's patientGuid could hand it to the wrong one."""
    plan = build_plan(
        images=[img(7, 70), img(7, 71), img(7, 72)],
        patient_guids={7: [G1], 8: [G2]},
        failed_patients={},
        media={
            70: MediaRow("OPG", False, patient_id=7),
            71: MediaRow("Bitewing", False, patient_id=8),
            72: MediaRow("old", False),  # no patient column configured: no check possible
        },
        clinic_id="c-1",
        key_template=DEFAULT_KEY_TEMPLATE,
    )
    assert [p.image_id for p in plan.images] == [70, 72]
    assert [(f.path, f.reason) for f in plan.failed] == [
        ("P_7/0000_71.dcm", "media row 71 names patient 8, but the file is in the folder of "
         "patient 7: not uploaded (conflict)")
    ]  # fmt: skip
    assert "Bitewing" not in plan.failed[0].reason  # ids only, no names


def test_two_images_with_one_key_are_both_failed_naming_each_other():
    """A template the configuration refuses (``{image_id}{name}``) given to the planner
    directly: image 61 named "2x" and image 612 named "x" get one key. Neither is planned;
    each is failed naming the other's path. Every other image is planned as usual."""
    template = "images/{patient_guid}/{clinic_id}_{image_id}{name}.dcm"
    plan = build_plan(
        images=[img(1, 61), img(1, 612), img(1, 7)],
        patient_guids={1: [G1]},
        failed_patients={},
        media={61: MediaRow("2x", False), 612: MediaRow("x", False), 7: MediaRow("x", False)},
        clinic_id="c",
        key_template=template,
    )
    assert [i.rel_path for i in plan.images] == ["P_1/0000_7.dcm"]
    reasons = {p.path: p.reason for p in plan.failed}
    key = f"images/{G1}/c_612x.dcm"
    assert reasons == {
        "P_1/0000_61.dcm": f"key conflict: P_1/0000_612.dcm has the same key {key}; "
        "neither is uploaded",
        "P_1/0000_612.dcm": f"key conflict: P_1/0000_61.dcm has the same key {key}; "
        "neither is uploaded",
    }


def test_an_image_whose_media_row_vanished_keeps_the_name_it_is_archived_under():
    """The catalog knows image 10 as "OPG" and image 11 by a key that carries "Bite" (a row
    from before names were recorded); image 12 never had a row (its key says unnamed), and
    image 13's row had no name. Only 12 gets the fallback name with the usual note."""
    from pdata_sync.pipeline.outage import names_archived
    from pdata_sync.pipeline.plan import NOTE_MEDIA_ROW_VANISHED

    archived = names_archived(
        [
            (10, f"images/{G1}/c_10_OPG.dcm", "OPG"),
            (11, f"images/{G1}/c_11_Bite.dcm", None),
            (12, f"images/{G1}/c_12_unnamed.dcm", None),
            (13, f"images/{G1}/c_13_unnamed.dcm", ""),
        ],
        DEFAULT_KEY_TEMPLATE,
    )
    assert archived == {10: "OPG", 11: "Bite", 13: ""}
    plan = build_plan(
        images=[img(1, 10), img(1, 11), img(1, 12), img(1, 13)],
        patient_guids={1: [G1]},
        failed_patients={},
        media={},
        clinic_id="c",
        key_template=DEFAULT_KEY_TEMPLATE,
        archived_names=archived,
    )
    assert [i.key.rsplit("/", 1)[1] for i in plan.images] == [
        "c_10_OPG.dcm",
        "c_11_Bite.dcm",
        "c_12_unnamed.dcm",
        "c_13_unnamed.dcm",
    ]
    assert {n.path: n.reason for n in plan.notes} == {
        "P_1/0000_10.dcm": NOTE_MEDIA_ROW_VANISHED,
        "P_1/0000_11.dcm": NOTE_MEDIA_ROW_VANISHED,
        "P_1/0000_12.dcm": NOTE_NO_MEDIA_ROW,
        "P_1/0000_13.dcm": NOTE_MEDIA_ROW_VANISHED,
    }
