"""Where a clinic's backfill stands across nights: one row per sync run, and one line.

A large clinic's first sync on a slow uplink takes many nights (docs/bandwidth.md). After
each sync the clinic's ``backfill-nights-{clinic}`` table artifact gets this run's row
appended to the rows of its version before (read back from Prefect; the last
:data:`KEEP_NIGHTS` are kept), and the ``backfill-{clinic}`` progress artifact shows the
share of the archive's bytes that S3 holds, with :func:`headline` as its description. Both
carry counts, sizes and rates only: no path, name or CardId.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pdata_sync.pipeline.report import RunSummary

# the event a sync emits when the backlog has not shrunk for STALLED_RUNS runs in a row;
# the clinic's "backfill stalled" automation turns it into a notification
STALLED_EVENT = "pdata-sync.backfill.stalled"
STALLED_RUNS = 3
KEEP_NIGHTS = 120  # four months of nightly runs; older rows drop off the artifact
COLUMNS = (
    "ended (UTC)",
    "uploaded",
    "uploaded GB",
    "Mbit/s",
    "archived",
    "archived GB",
    "left",
    "left GB",
    "nights left",
    "outcome",
)


def _gb(nbytes: int) -> float:
    return round(nbytes / 1e9, 3)


def night(summary: RunSummary, ended: datetime) -> dict[str, Any]:
    """This run's row of the backfill table."""
    data = summary.backlog()
    rate = data["rate"] or {}
    if summary.window_ended:
        outcome = "window ended"
    elif summary.ok:
        outcome = "complete"
    else:
        outcome = "with problems"
    return dict(
        zip(
            COLUMNS,
            (
                ended.strftime("%Y-%m-%d %H:%M"),
                summary.uploaded,
                _gb(summary.bytes_uploaded),
                rate.get("mbit_per_s"),
                data["archived"]["images"],
                _gb(data["archived"]["bytes"]),
                data["backlog"]["images"],
                _gb(data["backlog"]["bytes"]),
                data["runs_left"],
                outcome,
            ),
            strict=True,
        )
    )


def grown(previous: Any, row: dict[str, Any], keep: int = KEEP_NIGHTS) -> list[dict[str, Any]]:
    """The rows of the table's version before (as Prefect returns them: JSON text, or None
    for a clinic's first run) with ``row`` appended, the last ``keep`` of them. Rows that
    are not this table's (an edited or foreign artifact under the key) are dropped, not
    trusted: the table starts again from this run."""
    try:
        rows = json.loads(previous) if isinstance(previous, str) else previous
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        rows = []
    kept = [r for r in rows if isinstance(r, dict) and set(r) == set(COLUMNS)]
    return [*kept, row][-keep:]


def percent_archived(summary: RunSummary) -> float:
    """The progress artifact's value: the archive's bytes in S3 of those known."""
    return _percent(summary.backlog())


def _percent(backlog: dict[str, Any]) -> float:
    share = backlog["archived"]["percent"]
    return 100.0 if share is None else float(share)


def headline(summary: RunSummary) -> str:
    """One line on where the backfill stands, e.g. "20,000 images (20.0 GB) archived
    (25.0 %); 60,000 images (60.0 GB) left: about 3 more night(s) at 11.11 Mbit/s"."""
    data = summary.backlog()
    archived = f"{data['archived']['images']:,} images ({_gb(summary.archived_bytes):,.1f} GB)"
    if not summary.left:
        failed = data["backlog"]["images"]
        tail = f"; {failed:,} failed, tried again next run" if failed else ""
        return f"{archived} archived, none left{tail}"
    left = f"{summary.left:,} images ({_gb(summary.bytes_left):,.1f} GB) left"
    rate = data["rate"]
    if not rate:
        return f"{archived} archived ({_percent(data)} %); {left}, none uploaded"
    return (
        f"{archived} archived ({_percent(data)} %); {left}: about "
        f"{data['runs_left']} more night(s) at {rate['mbit_per_s']} Mbit/s"
    )


def runs_not_shrinking(rows: list[dict[str, Any]]) -> int:
    """How many of the last runs in a row left a backlog (``left``) no smaller than the run
    before them, while there was one: 0 when the last run shrank it or left nothing. At
    :data:`STALLED_RUNS` the sync emits :data:`STALLED_EVENT` (pdata_sync.fleet.alerts). A
    run counts, not a calendar night: a clinic synced twice in a night moves it twice."""
    count = 0
    for before, after in zip(rows[-2::-1], rows[::-1], strict=False):
        left, previous = after.get("left"), before.get("left")
        if not isinstance(left, int) or not isinstance(previous, int):
            break
        if left <= 0 or left < previous:
            break
        count += 1
    return count
