"""The fleet at a glance: one row per clinic from the run history, a day-by-clinic table of
images archived, and their chart.

The inputs are plain records of finished sync and verify runs (:class:`RunRecord`), each
sync with the counts of its ``sync-summary`` table artifact; the flow ``fleet-report``
(pdata_sync.flows.fleet_report) reads them from Prefect's API. Counts, sizes, states and
times only: no path, name or CardId reaches a report.

A clinic's row (:data:`COLUMNS`): its last Completed sync and the hours since; images and
bytes in S3 after its last sync that said so (total) and uploaded in the last 7 days; the
backlog, failed and rejected counts of its last sync; sync runs that failed or crashed in 7
days; the state and end of its last verify. A clinic deployed but without a run in the
period has a row of empty values: the row that most needs reading.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from pdata_sync.pipeline.report import (
    BACKLOG_BYTES,
    BACKLOG_IMAGES,
    BYTES,
    BYTES_AFTER,
    IMAGES_AFTER,
)

SYNC, VERIFY = "sync", "verify"
COLUMNS = (
    "clinic_id",
    "last_success",
    "hours_since_success",
    "images_archived",
    "bytes_archived",
    "images_7d",
    "bytes_7d",
    "backlog_images",
    "backlog_bytes",
    "failed",
    "rejected",
    "syncs_failed_7d",
    "last_sync_state",
    "last_verify_state",
    "last_verify_ended",
)
_NOT_OK = {"FAILED", "CRASHED"}


@dataclass(frozen=True)
class RunRecord:
    """One finished run of a clinic: ``flow`` is :data:`SYNC` or :data:`VERIFY`, ``state``
    Prefect's state type (COMPLETED, FAILED, CRASHED, CANCELLED), ``ended`` aware UTC;
    ``counts`` a sync's summary table as {(outcome, reason): count} (empty when it has
    none, e.g. a run refused before any work)."""

    run_id: str
    flow: str
    clinic_id: str
    state: str
    ended: datetime
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, outcome: str, reason: str | None = None) -> int | None:
        """One row's count, or the sum of an outcome's rows (reason None); None when the
        table has no such row (an older run's table)."""
        if reason is not None:
            return self.counts.get((outcome, reason))
        found = [n for (o, _), n in self.counts.items() if o == outcome]
        return sum(found) if found else None


def summary_counts(rows: Any) -> dict[tuple[str, str], int]:
    """A ``sync-summary`` table artifact's rows (as Prefect returns them: JSON text, or the
    list) as {(outcome, reason): count}; rows of any other shape are left out (the artifact
    is read back from a server, not trusted)."""
    if isinstance(rows, str):
        try:
            rows = json.loads(rows)
        except ValueError:
            rows = None
    counts: dict[tuple[str, str], int] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        outcome, reason, n = row.get("outcome"), row.get("reason"), row.get("count")
        if isinstance(outcome, str) and isinstance(reason, str) and type(n) is int:
            counts[(outcome, reason)] = counts.get((outcome, reason), 0) + n
    return counts


def _last(runs: list[RunRecord], flow: str, states: set[str] | None = None) -> RunRecord | None:
    chosen = [r for r in runs if r.flow == flow and (states is None or r.state in states)]
    return max(chosen, key=lambda r: r.ended, default=None)


def _last_with(runs: list[RunRecord], outcome: str, reason: str) -> int | None:
    """The count of the last sync whose table has this row."""
    for run in sorted((r for r in runs if r.flow == SYNC), key=lambda r: r.ended, reverse=True):
        value = run.count(outcome, reason)
        if value is not None:
            return value
    return None


def clinic_row(clinic_id: str, runs: list[RunRecord], now: datetime) -> dict[str, Any]:
    """One clinic's row of :data:`COLUMNS` from its finished runs."""
    week = now - timedelta(days=7)
    success = _last(runs, SYNC, {"COMPLETED"})
    last_sync = _last(runs, SYNC)
    verify = _last(runs, VERIFY)
    recent = [r for r in runs if r.flow == SYNC and r.ended >= week]
    with_counts = [r for r in recent if r.count("uploaded", "") is not None]
    return {
        "clinic_id": clinic_id,
        "last_success": success.ended if success else None,
        "hours_since_success": (
            round((now - success.ended).total_seconds() / 3600, 1) if success else None
        ),
        "images_archived": _last_with(runs, "archived", IMAGES_AFTER),
        "bytes_archived": _last_with(runs, "archived", BYTES_AFTER),
        "images_7d": sum(r.count("uploaded", "") or 0 for r in with_counts),
        "bytes_7d": sum(r.count("uploaded", BYTES) or 0 for r in with_counts),
        "backlog_images": last_sync.count("backlog", BACKLOG_IMAGES) if last_sync else None,
        "backlog_bytes": last_sync.count("backlog", BACKLOG_BYTES) if last_sync else None,
        "failed": (last_sync.count("failed") or 0) if last_sync and last_sync.counts else None,
        "rejected": (
            (last_sync.count("rejected") or 0) if last_sync and last_sync.counts else None
        ),
        "syncs_failed_7d": sum(r.state in _NOT_OK for r in recent),
        "last_sync_state": last_sync.state if last_sync else None,
        "last_verify_state": verify.state if verify else None,
        "last_verify_ended": verify.ended if verify else None,
    }


def fleet_frame(clinics: set[str], runs: list[RunRecord], now: datetime) -> pd.DataFrame:
    """One row per clinic (deployed ones and any with runs), sorted by clinic id."""
    by_clinic: dict[str, list[RunRecord]] = {c: [] for c in clinics}
    for run in runs:
        by_clinic.setdefault(run.clinic_id, []).append(run)
    rows = [clinic_row(c, by_clinic[c], now) for c in sorted(by_clinic)]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("last_success", "last_verify_ended"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    whole = [c for c in COLUMNS if c.startswith(("images", "bytes", "backlog", "failed"))]
    for column in [*whole, "rejected", "syncs_failed_7d"]:
        frame[column] = frame[column].astype("Int64")
    frame["hours_since_success"] = frame["hours_since_success"].astype("Float64")
    return frame


def daily_frame(
    clinics: set[str], runs: list[RunRecord], today: date, days: int = 30
) -> pd.DataFrame:
    """Images uploaded per UTC day (rows, the last ``days`` up to ``today``) per clinic
    (columns), 0 where none."""
    index = pd.Index([today - timedelta(days=n) for n in range(days - 1, -1, -1)], name="day")
    names = sorted(clinics | {r.clinic_id for r in runs})
    frame = pd.DataFrame(0, index=index, columns=names, dtype="int64")
    for run in runs:
        uploaded = run.count("uploaded", "") if run.flow == SYNC else None
        day = run.ended.date()
        if uploaded and day in frame.index:
            frame.loc[day, run.clinic_id] += uploaded
    return frame


def table_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The fleet frame as JSON-safe rows for a table artifact (times as ISO text)."""
    out = []
    for record in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        out.append(
            {k: v.isoformat() if isinstance(v, pd.Timestamp) else v for k, v in record.items()}
        )
    return out


def chart_png(
    fleet: pd.DataFrame, daily: pd.DataFrame, days: int, late_hours: float = 36.0
) -> bytes:
    """Two panels: images archived per day per clinic (a heat map: one line per clinic
    reads for 200 clinics, 200 lines do not), and the clinics by hours since their last
    Completed sync, the longest first (none in the period: drawn at the period's length,
    in red)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    n = max(len(fleet), 1)
    height = min(max(3.0, 0.12 * n + 1.5), 26.0)
    label_size = max(3.0, min(8.0, 400 / n))
    fig, (heat, bars) = plt.subplots(
        1, 2, figsize=(14, height), gridspec_kw={"width_ratios": [3, 2]}, layout="constrained"
    )
    data = daily.T.sort_index()
    image = heat.imshow(data.to_numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    heat.set_title(f"Images archived per day, last {days} days (UTC)")
    heat.set_yticks(range(len(data.index)), labels=list(data.index), fontsize=label_size)
    ticks = list(range(0, len(data.columns), max(1, len(data.columns) // 6)))
    heat.set_xticks(ticks, labels=[data.columns[i].strftime("%m-%d") for i in ticks])
    fig.colorbar(image, ax=heat, label="images", shrink=min(1.0, 6.0 / height))

    period_hours = days * 24.0
    hours = fleet.set_index("clinic_id")["hours_since_success"].astype(float)
    none = hours.isna()
    shown = hours.fillna(period_hours).sort_values()
    colours = ["tab:red" if none[c] else "tab:blue" for c in shown.index]
    bars.barh(range(len(shown)), shown.to_numpy(), color=colours)
    bars.set_yticks(range(len(shown)), labels=list(shown.index), fontsize=label_size)
    for row, (clinic, value) in enumerate(shown.items()):
        text = "none" if none[clinic] else f"{value:.1f} h"
        bars.text(value, row, f" {text}", va="center", fontsize=label_size)
    bars.axvline(late_hours, color="tab:orange", linestyle="--", linewidth=1)
    bars.set_xlabel(f"hours since the last Completed sync (red: none; dashed: {late_hours:g} h)")
    bars.set_title("Clinics by hours since their last success")
    widest = max(period_hours if none.any() else 0, float(shown.max()) if len(shown) else 0)
    bars.set_xlim(0, max(widest, late_hours) * 1.15)
    bars.set_ylim(-0.5, max(len(shown), 1) - 0.5)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def headline(fleet: pd.DataFrame, hours: float = 36.0) -> str:
    """One line for the artifact's description: clinics, how many without a Completed sync
    within ``hours``, and the week's images."""
    since = fleet["hours_since_success"].astype(float)
    late = int(((since > hours) | since.isna()).sum())
    week = int(fleet["images_7d"].fillna(0).sum())
    return (
        f"{len(fleet)} clinic(s); {late} without a Completed sync in {hours:g} h; "
        f"{week:,} image(s) archived in 7 days"
    )
