"""``pdata-sync audit``'s text lines (pdata_sync.cli.runs.audit_line)."""

from __future__ import annotations

from pdata_sync.cli.runs import audit_line


def event(transition, before, after, detail=None):
    return {
        "at": "2026-12-07T01:00:00+00:00",
        "key": "images/g/c1_7_x.dcm",
        "transition": transition,
        "from_state": before,
        "to_state": after,
        "flow_run_id": "run-1",
        "detail": detail,
    }


def test_a_retire_says_where_the_copy_went_and_nothing_else_says_none():
    moved = audit_line(event("retire", "verified", "retired", "retired/c1/T/x.dcm (gone)"))
    assert moved.endswith("retire: verified -> retired  run run-1  -> retired/c1/T/x.dcm (gone)")
    # a retire recorded before events kept their place (catalog 0009): no "None (None)"
    older = audit_line(event("retire", "verified", "retired"))
    assert "None" not in older and older.endswith("run run-1")
    assert "->" not in audit_line(event("begin_upload", None, "pending")).split("run run-1")[1]
