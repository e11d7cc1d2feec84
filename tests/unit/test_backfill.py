"""The backfill's rows and headline (pdata_sync.pipeline.backfill): what an operator reads
each night of a first sync that takes many."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pdata_sync.pipeline import backfill
from pdata_sync.pipeline.report import RunSummary
from pdata_sync.source.pdata import Problem

ENDED = datetime(2026, 12, 8, 6, 30, tzinfo=UTC)


def night_one() -> RunSummary:
    # 20 GB up in 4 hours (about 11 Mbit/s), 60 GB left
    return RunSummary(
        clinic_id="c",
        uploaded=20_000,
        bytes_uploaded=20_000_000_000,
        upload_seconds=4 * 3600,
        left=60_000,
        bytes_left=60_000_000_000,
        window_ended="stopped at the end of its window: ...",
        archived_images=20_000,
        archived_bytes=20_000_000_000,
    )


def test_a_night_that_ended_with_its_window_says_how_many_are_left():
    summary = night_one()
    row = backfill.night(summary, ENDED)
    assert row == {
        "ended (UTC)": "2026-12-08 06:30",
        "uploaded": 20_000,
        "uploaded GB": 20.0,
        "Mbit/s": 11.11,
        "archived": 20_000,
        "archived GB": 20.0,
        "left": 60_000,
        "left GB": 60.0,
        "nights left": 3,
        "outcome": "window ended",
    }
    assert backfill.percent_archived(summary) == 25.0
    assert backfill.headline(summary) == (
        "20,000 images (20.0 GB) archived (25.0 %); 60,000 images (60.0 GB) left: "
        "about 3 more night(s) at 11.11 Mbit/s"
    )


def test_the_last_night_reads_100_percent_and_names_failures_as_tried_again():
    summary = RunSummary(
        clinic_id="c", uploaded=5, bytes_uploaded=5_000, upload_seconds=1.0,
        archived_images=80_000, archived_bytes=80_000_000_000,
    )  # fmt: skip
    summary.failed.append(Problem("P_1/0000_1.dcm", "timeout"))
    assert backfill.percent_archived(summary) == 100.0
    assert backfill.headline(summary) == (
        "80,000 images (80.0 GB) archived, none left; 1 failed, tried again next run"
    )
    assert backfill.night(summary, ENDED)["outcome"] == "with problems"


def test_the_table_grows_by_one_row_a_night_and_keeps_the_last_ones():
    first = backfill.night(night_one(), ENDED)
    rows = backfill.grown(None, first)
    assert rows == [first]
    # Prefect gives a table back as JSON text
    again = backfill.grown(json.dumps(rows), {**first, "left": 40_000})
    assert [r["left"] for r in again] == [60_000, 40_000]
    assert [r["left"] for r in backfill.grown(again, first, keep=2)] == [40_000, 60_000]


def test_a_table_that_is_not_ours_starts_again_instead_of_being_trusted():
    row = backfill.night(night_one(), ENDED)
    for previous in ("not json", json.dumps({"a": 1}), json.dumps([{"patient": "x"}]), 42):
        assert backfill.grown(previous, row) == [row]
