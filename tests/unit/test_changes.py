"""Incremental runs decided without a database (pdata_sync/source/changes.py, docs/adr/0010): every
fact that can move an image changes the patient's digest; a run reads only changed patients;
a patient is recorded as done only when its whole folder was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pdata_sync.source.changes import (
    FULL,
    INCREMENTAL,
    WHY_CONFIG,
    WHY_DISABLED,
    WHY_DUE,
    WHY_FIRST,
    WHY_FUTURE,
    WHY_NO_MEDIA_PATIENT,
    WHY_REQUESTED,
    ChangeSet,
    LastFull,
    MediaEntry,
    PatientFacts,
    changed_patients,
    choose_mode,
    patient_digest,
    patient_facts,
    to_record,
)

GUID = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
BASE = PatientFacts(
    card_ids=("K-100",),
    skipped="",
    guids=(GUID,),
    failed="",
    media=(MediaEntry(1000, "OPG", False), MediaEntry(1001, "Bitewing", False)),
)


@pytest.mark.parametrize(
    "change",
    [
        {"card_ids": ("K-200",)},  # CardId changed in Sidexis
        {"skipped": "patients_deleted"},  # patient deleted
        {"guids": (OTHER,)},  # the resolver now answers another patientGuid
        {"guids": ()},  # ... or no longer knows the CardId
        {"failed": "resolver answered 503"},
        {"media": BASE.media + (MediaEntry(1002, "OPG", False),)},  # a new image
        {"media": BASE.media[:1]},  # an image moved to another patient (or its row gone)
        {"media": (MediaEntry(1000, "OPG", False), MediaEntry(1001, "Renamed", False))},
        {"media": (MediaEntry(1000, "OPG", False), MediaEntry(1001, "Bitewing", True))},
    ],
)
def test_every_fact_that_can_move_an_image_changes_the_digest(change):
    changed = PatientFacts(**{**BASE.__dict__, **change})
    assert patient_digest(changed) != patient_digest(BASE)


def test_the_digest_does_not_depend_on_the_order_media_rows_are_read():
    shuffled = PatientFacts(**{**BASE.__dict__, "media": tuple(reversed(BASE.media))})
    assert patient_digest(shuffled) == patient_digest(BASE)


def test_facts_combine_the_lookup_the_resolver_and_the_media_rows():
    facts = patient_facts(
        [1, 2, 3],
        card_ids={1: ["K-1", "K-1b"], 2: ["K-2"]},
        skipped={3: "patients_deleted"},
        mapping={"K-1": GUID, "K-1b": GUID},
        failed={"K-2": "timeout"},
        media={1: [(1000, "OPG", False)]},
    )
    assert facts[1].guids == (GUID,) and facts[1].media == (MediaEntry(1000, "OPG", False),)
    assert facts[2].failed == "timeout" and facts[2].guids == ()
    assert facts[3].skipped == "patients_deleted" and facts[3].card_ids == ()


NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def mode(**kw):
    base = dict(enabled=True, media_patient_column=True, requested_full=False,
                last_full=LastFull(NOW - timedelta(days=1), "s"), settings="s",
                full_every=timedelta(days=7), now=NOW)  # fmt: skip
    base.update(kw)
    return choose_mode(**base)


def test_a_run_is_incremental_only_when_nothing_calls_for_a_full_one():
    assert mode() == (INCREMENTAL, "")
    assert mode(enabled=False) == (FULL, WHY_DISABLED)
    assert mode(media_patient_column=False, requested_full=True) == (FULL, WHY_NO_MEDIA_PATIENT)
    assert mode(requested_full=True) == (FULL, WHY_REQUESTED)
    assert mode(last_full=None) == (FULL, WHY_FIRST)  # new worker, other destination
    assert mode(settings="t") == (FULL, WHY_CONFIG)
    assert mode(last_full=LastFull(NOW - timedelta(days=7), "s")) == (FULL, WHY_DUE)
    assert mode(last_full=LastFull(NOW - timedelta(days=6, hours=23), "s")) == (INCREMENTAL, "")
    # a clock that ran ahead: a full run dated next week would keep the next one from being
    # due until then; a patient's mark from the future says nothing either
    assert mode(last_full=LastFull(NOW + timedelta(days=7), "s")) == (FULL, WHY_FUTURE)
    assert mode(latest_mark=NOW + timedelta(hours=1)) == (FULL, WHY_FUTURE)
    # another worker's few minutes of skew are not a wrong clock
    assert mode(last_full=LastFull(NOW + timedelta(minutes=5), "s")) == (INCREMENTAL, "")
    assert mode(latest_mark=NOW + timedelta(minutes=5)) == (INCREMENTAL, "")


def test_changed_patients_are_new_ones_and_those_whose_digest_differs():
    assert changed_patients({1: "a", 2: "b", 3: "c"}, {1: "a", 2: "x", 9: "z"}) == {2, 3}


def changes(**kw) -> ChangeSet:
    base = dict(mode=INCREMENTAL, full_reason="", digests={1: "d1", 2: "d2", 3: "d3", 4: "d4"},
                read=frozenset({1, 2, 3, 4}), expected={1: frozenset({10, 11}),
                2: frozenset({20}), 3: frozenset({30}), 4: frozenset()})  # fmt: skip
    base.update(kw)
    return ChangeSet(**base)


def test_only_a_patient_handled_completely_is_recorded_as_done():
    record = to_record(
        changes(),
        read=[1, 2, 3, 4],
        found={1: frozenset({10, 11}), 2: frozenset({20}), 4: frozenset({40})},
        problem_paths=["P_2/0000_20.dcm", "(retirement)"],
    )
    # 2 had a failed image; 3's media row 30 has no file yet (a row written before its file)
    assert record.keep == {1: "d1", 4: "d4"}
    assert record.forget == {2, 3}
    assert not record.full


def test_a_folder_that_could_not_be_listed_is_read_again():
    record = to_record(changes(), read=[1], found={}, problem_paths=["P_1"])
    assert record.keep == {} and record.forget == {1}


def test_a_full_run_replaces_the_record():
    record = to_record(changes(mode=FULL, read=None), read=[4], found={}, problem_paths=[])
    assert record.full and record.keep == {4: "d4"}
