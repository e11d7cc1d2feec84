"""A small night of many clinics (the fleet benchmark's own code, bench/fleet.py): a real
PostgreSQL, a real Prefect server on it, 6 generated clinics deployed from generated
deployments/ files, all due in the same minute, two process workers polling the pool,
SeaweedFS and the resolver. The run history must be complete:
every run created by the scheduler and completed, none of one clinic overlapping another,
every task run recorded, every object in S3."""

from __future__ import annotations

import pytest

from tests.kit.fleet import FleetParams, run_night


# about 2 minutes alone (the schedules' minutes have to come); more beside the rest
@pytest.mark.timeout(600)
def test_a_night_of_six_clinics_leaves_a_complete_history(tmp_path):
    params = FleetParams(clinics=6, workers=2, window_minutes=1, min_images=30, max_images=60)
    report = run_night(tmp_path / "fleet", params, log=print)
    print(report.table())
    assert report.problems == []
    assert report.runs_created_by_scheduler == 6  # by the scheduler, not by hand
    assert report.runs_completed == 6
    assert report.overlapping_runs == 0
    assert report.task_runs_recorded == report.task_runs_expected
    assert report.task_runs_expected >= 6 * 9  # bookkeeping and at least one batch each
    assert report.objects_in_s3 == report.objects_expected > 6 * 20
    assert report.sample_identical == "6 of 6"
    assert report.database_mb > 1 and report.server_peak_rss_mb > 50
    # the fleet report of that night: one row per clinic, each with the right counts
    assert report.fleet_report_rows_right == "6 of 6"
    assert report.fleet_report_headline.startswith("6 clinic(s); 0 without a Completed sync")
    assert report.ok
