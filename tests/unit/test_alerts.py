"""The clinics' alerts as data (pdata_sync.fleet.alerts) and the backlog count that feeds
the "backfill stalled" alert (pdata_sync.pipeline.backfill); the automations themselves are
tested on a real Prefect server in tests/integration/test_alerts.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pdata_sync.fleet.alerts import AlertsConfig, automation_names, automations, owner
from pdata_sync.pipeline.backfill import STALLED_RUNS, runs_not_shrinking


def rows(*left):
    return [{"left": n} for n in left]


@pytest.mark.parametrize(
    ("lefts", "count"),
    [
        ((), 0),
        ((5,), 0),
        ((5, 5), 1),
        ((9, 5, 5, 6, 6), 3),  # growing counts as not shrinking
        ((5, 4), 0),
        ((0, 0, 0, 0), 0),  # nothing left is no stall
        ((7, 7, 7, 3), 0),  # the last run made progress
    ],
)
def test_runs_not_shrinking_counts_the_last_runs_without_progress(lefts, count):
    assert runs_not_shrinking(rows(*lefts)) == count


def test_a_row_without_a_count_ends_the_streak():
    assert runs_not_shrinking([{"left": 5}, {"left": None}, {"left": 5}, {"left": 5}]) == 1
    assert STALLED_RUNS == 3


@pytest.mark.parametrize("block", ["ops", "Slack/ops", "slack-webhook/", "a/b/c", "x/ ops"])
def test_the_block_is_named_with_its_type(block):
    with pytest.raises(ValidationError):
        AlertsConfig(notify_block=block)


def test_a_proactive_window_under_prefects_minimum_is_refused():
    with pytest.raises(ValidationError):
        AlertsConfig(notify_block="custom-webhook/ops", alert_after_hours=5 / 3600)


def test_names_are_found_again_and_foreign_ones_left_alone():
    for name in automation_names("clinic-7").values():
        assert owner(name) == "clinic-7"
    for foreign in ("pdata-sync", "my automation: x", "pdata-syncer clinic-7: run failed"):
        assert owner(foreign) is None


def test_switched_off_alerts_are_not_asked_for_and_prefect_accepts_the_rest():
    from prefect.events.schemas.automations import AutomationCore

    alerts = AlertsConfig(
        notify_block="custom-webhook/ops", on_failure=False, on_stalled_backfill=False
    )
    wanted = automations("c1", alerts, "0" * 8 + "-0000-0000-0000-" + "0" * 12, "1" * 32, None, "f")
    assert list(wanted) == [automation_names("c1")["silent"]]
    full = automations(
        "c1", AlertsConfig(notify_block="custom-webhook/ops"), "0" * 32, "1" * 32, "2" * 32, "f"
    )
    for spec in full.values():
        AutomationCore.model_validate(spec)
    failed = full[automation_names("c1")["failed"]]["trigger"]
    # a sync and a verify deployment; runs started by hand (no deployment) do not alert
    assert len(failed["match_related"]["prefect.resource.id"]) == 2
    silent = full[automation_names("c1")["silent"]]["trigger"]
    assert silent["within"] == 36 * 3600 and silent["posture"] == "Proactive"
