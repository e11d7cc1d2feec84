"""The fleet report's chart (matplotlib, which asks fontconfig for the fonts on its first
use: a process, hence not a unit test)."""

from __future__ import annotations

from pdata_sync.fleet.report import chart_png, daily_frame, fleet_frame
from tests.unit.test_fleet_report import NOW, sync


def test_the_chart_is_a_png_for_one_clinic_and_for_two_hundred():
    few = [sync("a", 3, uploaded=4)]
    png = chart_png(fleet_frame(set(), few, NOW), daily_frame(set(), few, NOW.date()), 30)
    assert png.startswith(b"\x89PNG")
    many = {f"clinic-{i:03d}" for i in range(200)}
    runs = [sync(c, i % 50, uploaded=i) for i, c in enumerate(sorted(many))]
    png = chart_png(fleet_frame(many, runs, NOW), daily_frame(many, runs, NOW.date()), 30)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
