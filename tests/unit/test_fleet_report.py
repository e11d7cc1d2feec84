"""The fleet report's core (pdata_sync.fleet.report) over run records as the flow reads them
from Prefect; the flow itself runs against a real server after the fleet night
(tests/integration/test_fleet.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd

from pdata_sync.fleet.report import (
    SYNC,
    VERIFY,
    RunRecord,
    daily_frame,
    fleet_frame,
    headline,
    summary_counts,
    table_rows,
)
from pdata_sync.pipeline.report import BACKLOG_IMAGES, BYTES, BYTES_AFTER, IMAGES_AFTER

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def sync(clinic, hours_ago, state="COMPLETED", uploaded=0, archived=None, left=0, failed=0):
    counts = {("uploaded", ""): uploaded, ("uploaded", BYTES): uploaded * 1000}
    counts[("backlog", BACKLOG_IMAGES)] = left
    if archived is not None:
        counts[("archived", IMAGES_AFTER)] = archived
        counts[("archived", BYTES_AFTER)] = archived * 1000
    if failed:
        counts[("failed", "upload refused: 503")] = failed
    counts[("rejected", "not DICOM")] = 2
    return RunRecord(
        f"{clinic}-{hours_ago}", SYNC, clinic, state, NOW - timedelta(hours=hours_ago), counts
    )


def test_a_clinic_row_reads_its_last_runs():
    runs = [
        sync("a", 24 * 10, uploaded=500, archived=500),  # outside the week
        sync("a", 30, uploaded=20, archived=520),
        sync("a", 6, state="FAILED", uploaded=5, archived=525, left=3, failed=3),
        RunRecord("v1", VERIFY, "a", "FAILED", NOW - timedelta(hours=50)),
        RunRecord("v2", VERIFY, "a", "COMPLETED", NOW - timedelta(hours=2)),
    ]
    frame = fleet_frame({"a", "silent"}, runs, NOW).set_index("clinic_id")
    a = frame.loc["a"]
    assert a["last_success"] == pd.Timestamp(NOW - timedelta(hours=30))
    assert a["hours_since_success"] == 30.0
    assert a["images_archived"] == 525 and a["bytes_archived"] == 525_000
    assert a["images_7d"] == 25 and a["bytes_7d"] == 25_000
    assert a["backlog_images"] == 3 and a["failed"] == 3 and a["rejected"] == 2
    assert a["syncs_failed_7d"] == 1 and a["last_sync_state"] == "FAILED"
    assert a["last_verify_state"] == "COMPLETED"
    # deployed, no run in the period: a row all the same, of empty values
    silent = frame.loc["silent"]
    assert pd.isna(silent["last_success"]) and pd.isna(silent["hours_since_success"])
    assert silent["images_7d"] == 0 and pd.isna(silent["last_sync_state"])
    assert headline(frame.reset_index()) == (
        "2 clinic(s); 1 without a Completed sync in 36 h; 25 image(s) archived in 7 days"
    )
    rows = table_rows(frame.reset_index())
    assert rows[1]["clinic_id"] == "silent" and rows[1]["last_success"] is None
    assert rows[0]["last_success"].startswith("2026-12-06T02:00")


def test_an_older_table_without_the_new_rows_leaves_totals_from_the_last_that_had_them():
    old = sync("a", 40, uploaded=10, archived=100)
    newer = RunRecord("b", SYNC, "a", "COMPLETED", NOW - timedelta(hours=4), {("uploaded", ""): 1})
    a = fleet_frame(set(), [old, newer], NOW).iloc[0]
    assert a["images_archived"] == 100  # from the run that said so
    assert a["images_7d"] == 11


def test_images_per_day_per_clinic():
    runs = [sync("a", 1, uploaded=7), sync("a", 2, uploaded=3), sync("b", 30, uploaded=4)]
    runs.append(sync("b", 24 * 40, uploaded=99))  # before the period
    daily = daily_frame({"c"}, runs, NOW.date(), days=30)
    assert list(daily.columns) == ["a", "b", "c"] and len(daily) == 30
    assert daily.loc[NOW.date(), "a"] == 10
    assert daily.loc[(NOW - timedelta(hours=30)).date(), "b"] == 4
    assert int(daily.to_numpy().sum()) == 14


def test_summary_rows_read_back_from_a_server_are_not_trusted():
    rows = [
        {"outcome": "uploaded", "reason": "", "count": 5},
        {"outcome": "uploaded", "reason": "", "count": "5"},
        {"outcome": "x"},
        "junk",
        {"outcome": "failed", "reason": "a", "count": True},
    ]
    assert summary_counts(rows) == {("uploaded", ""): 5}
    assert summary_counts(json.dumps(rows)) == {("uploaded", ""): 5}  # as Prefect returns it
    assert summary_counts("not a table") == {}
