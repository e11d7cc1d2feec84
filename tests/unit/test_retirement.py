"""Which archived objects no longer belong (pdata_sync/pipeline/retirement.py), decided without S3:
only what the run knows is gone is retired; whatever it is unsure of is kept."""

from __future__ import annotations

from pdata_sync.catalog import DRIFTED, PENDING, VERIFIED, CatalogRow
from pdata_sync.pipeline.retirement import (
    FILE_GONE,
    KEY_CHANGED,
    PATIENT_CHANGED,
    SafetyLimit,
    SourceView,
    retirements,
)

OLD = "11111111-1111-4111-8111-111111111111"
NEW = "22222222-2222-4222-8222-222222222222"


def row(path: str, key: str, state=VERIFIED, guid=OLD) -> CatalogRow:
    return CatalogRow(key, path, guid, 10, 1, "sha", "etag", state)


def view(**kw) -> SourceView:
    base = dict(planned={}, found=frozenset(), listed_folders=frozenset({"P_1"}), deleted={},
                unsure=frozenset())  # fmt: skip
    base.update(kw)
    return SourceView(**base)


def test_a_file_planned_under_another_patient_or_name_retires_its_old_key_once_verified():
    rows = [
        row("P_1/0000_1.dcm", f"images/{OLD}/c_1_x.dcm"),  # remapped patient
        row("P_1/0000_2.dcm", f"images/{OLD}/c_2_old.dcm"),  # renamed image
        row("P_1/0000_2.dcm", f"images/{OLD}/c_2_new.dcm"),
    ]
    planned = {
        "P_1/0000_1.dcm": frozenset({f"images/{NEW}/c_1_x.dcm"}),
        "P_1/0000_2.dcm": frozenset({f"images/{OLD}/c_2_new.dcm"}),
    }
    found = frozenset(planned)
    done = frozenset({f"images/{NEW}/c_1_x.dcm", f"images/{OLD}/c_2_new.dcm"})
    out = retirements(rows, view(planned=planned, found=found), done)
    assert [(r.key, r.reason) for r in out] == [
        (f"images/{OLD}/c_1_x.dcm", PATIENT_CHANGED),
        (f"images/{OLD}/c_2_old.dcm", KEY_CHANGED),
    ]
    # the replacement of 0000_1 is not verified yet: its old object stays for now
    out = retirements(rows, view(planned=planned, found=found), done - {f"images/{NEW}/c_1_x.dcm"})
    assert [r.key for r in out] == [f"images/{OLD}/c_2_old.dcm"]


def test_gone_and_deleted_sources_retire_unsure_ones_never():
    rows = [
        row("P_1/0000_1.dcm", f"images/{OLD}/c_1.dcm"),  # file gone, folder listed
        row("P_2/0000_2.dcm", f"images/{OLD}/c_2.dcm"),  # folder not listed (share problem)
        row("P_1/0000_3.dcm", f"images/{OLD}/c_3.dcm"),  # media row deleted
        row("P_1/0000_4.dcm", f"images/{OLD}/c_4.dcm"),  # failed this run (e.g. resolver)
        row("P_1/0000_5.dcm", f"images/{OLD}/c_5.dcm", state=PENDING),  # file gone too
        row("P_1/0000_6.dcm", f"images/{OLD}/c_6.dcm", state=DRIFTED),  # file gone too
    ]
    source = view(
        found=frozenset({"P_1/0000_3.dcm", "P_1/0000_4.dcm"}),
        deleted={"P_1/0000_3.dcm": "the media row was deleted in Sidexis"},
        unsure=frozenset({"P_1/0000_4.dcm"}),
    )
    out = retirements(rows, source, frozenset())
    assert [(r.key, r.reason) for r in out] == [
        (f"images/{OLD}/c_1.dcm", FILE_GONE),
        (f"images/{OLD}/c_3.dcm", "the media row was deleted in Sidexis"),
        (f"images/{OLD}/c_5.dcm", FILE_GONE),  # an interrupted run's upload may have landed
        (f"images/{OLD}/c_6.dcm", FILE_GONE),
    ]


def test_the_safety_limit_is_five_percent_at_least_25_up_to_half_at_most_500():
    limit = SafetyLimit()
    assert limit.limit(1000) == 50 and limit.limit(100_000) == 500
    # a small clinic: 5 % of 35 is 1; one remapped patient with 10 images must not fail
    # every run until someone edits the config, but a patient table that answers empty for a
    # night must not retire half of it
    assert limit.limit(100) == 25 and limit.limit(60) == 25
    assert limit.limit(35) == 17 and limit.limit(10) == 5 and limit.limit(1) == 0
    assert not limit.trips(10, 35) and limit.trips(18, 35) and limit.trips(35, 35)
    assert not limit.trips(50, 1000) and limit.trips(51, 1000)
    assert limit.trips(501, 1_000_000)
    assert SafetyLimit(fraction=0.5, count=500).limit(100) == 50
    assert SafetyLimit(count=10).limit(35) == 10  # an operator's maximum stays the maximum
    assert SafetyLimit(floor=0).limit(10) == 0
