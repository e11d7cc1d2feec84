"""A simulated night of many clinics on one Prefect server (``make bench-fleet``, and a small
version in the tests): a real PostgreSQL and a real Prefect server on it, N generated small
clinics deployed from generated ``deployments/`` files with their schedules spread over a
window, M process workers polling the work pool, one SeaweedFS and one resolver, all on
127.0.0.1. The report says whether the run history is the complete audit trail it must be:
every scheduled run created and finished, no clinic running twice at once, every task run
recorded, every object in S3.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from pdata_sync.demo.generate import Manifest, generate_clinic
from pdata_sync.demo.prefect_server import (
    PrefectServer,
    create_work_pool,
    deploy_all,
    start_worker,
    stop_processes,
)
from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import BUCKET, write_config
from pdata_sync.demo.seaweed import SeaweedS3
from pdata_sync.demo.serve import WORK_POOL, write_deployment_file
from pdata_sync.fleet.deployments import render_to
from pdata_sync.pipeline.report import BOOKKEEPING_TASKS
from tests.kit.postgres import PostgresServer

LATE_AFTER = timedelta(minutes=1)


@dataclass(frozen=True)
class FleetParams:
    clinics: int = 200
    workers: int = 4
    window_minutes: int = 20
    min_images: int = 30
    max_images: int = 300
    worker_limit: int = 1  # flow runs at once per worker
    seed: int = 7


@dataclass
class NightReport:
    clinics: int
    workers: int
    window_minutes: int
    images_expected: int = 0
    runs_created_by_scheduler: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    runs_other: int = 0
    runs_late: int = 0
    max_start_delay_s: float = 0.0
    overlapping_runs: int = 0
    task_runs_recorded: int = 0
    task_runs_expected: int = 0
    objects_in_s3: int = 0
    objects_expected: int = 0
    sample_identical: str = ""
    server_peak_rss_mb: float = 0.0
    server_cpu_s: float = 0.0
    server_peak_cpu_pct: float = 0.0
    postgres_peak_rss_mb: float = 0.0
    postgres_cpu_s: float = 0.0
    database_mb: float = 0.0
    night_wall_s: float = 0.0
    history_settled_s: float = 0.0  # after the last run ended, until every task run showed
    fleet_report_rows_right: str = ""  # "6 of 6": clinics whose report row is right
    fleet_report_headline: str = ""
    fleet_report_chart: str = ""  # the PNG's path
    setup_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.runs_created_by_scheduler == self.clinics
            and self.runs_completed == self.clinics
            and self.overlapping_runs == 0
            and self.task_runs_recorded == self.task_runs_expected
            and self.objects_in_s3 == self.objects_expected
            and self.fleet_report_rows_right == f"{self.clinics} of {self.clinics}"
            and not self.problems
        )

    def table(self) -> str:
        rows = [
            (
                "clinics / workers / window",
                f"{self.clinics} / {self.workers} / {self.window_minutes} min",
            ),
            ("images expected in S3", self.objects_expected),
            ("runs created by the scheduler", self.runs_created_by_scheduler),
            (
                "runs completed / failed / other",
                f"{self.runs_completed} / {self.runs_failed} / {self.runs_other}",
            ),
            (
                "runs late (started > 1 min after due)",
                f"{self.runs_late} (max delay {self.max_start_delay_s:.0f} s)",
            ),
            ("overlapping runs of one clinic", self.overlapping_runs),
            (
                "task runs recorded / expected",
                f"{self.task_runs_recorded} / {self.task_runs_expected}",
            ),
            ("objects in S3 / expected", f"{self.objects_in_s3} / {self.objects_expected}"),
            ("byte-identical sample", self.sample_identical),
            (
                "Prefect server peak PSS / CPU in the night",
                f"{self.server_peak_rss_mb:.0f} MB / "
                f"{self.server_cpu_s:.0f} s (peak {self.server_peak_cpu_pct:.0f} %)",
            ),
            (
                "PostgreSQL peak PSS / CPU in the night",
                f"{self.postgres_peak_rss_mb:.0f} MB / {self.postgres_cpu_s:.0f} s",
            ),
            ("Prefect database size", f"{self.database_mb:.1f} MB"),
            ("night wall time (first due to last done)", f"{self.night_wall_s:.0f} s"),
            ("history complete after the last run", f"{self.history_settled_s:.0f} s"),
            ("set-up (generate, start, deploy)", f"{self.setup_s:.0f} s"),
            ("fleet report: clinics' rows right", self.fleet_report_rows_right),
            ("fleet report", self.fleet_report_headline),
            ("fleet report chart", self.fleet_report_chart),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"problem: {p}" for p in self.problems]
        lines.append("OK" if self.ok else "NOT OK")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- process statistics from /proc ------------------------------------------------------

_TICKS = 100.0  # USER_HZ on Linux


def _proc_stat(pid: int) -> tuple[float, float] | None:
    """(memory in MB, CPU seconds so far) of one process, or None when it is gone. Memory is
    the proportional set size (shared pages divided among their users: PostgreSQL's
    backends share its buffers), else the resident set size."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = 0
    with contextlib.suppress(OSError):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        kb = next(
            (int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0
        )
    if not kb:
        kb = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
    return kb / 1024, (int(stat[11]) + int(stat[12])) / _TICKS


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Sampler:
    """Peak RSS and CPU of a process group (a root pid and its children), once a second."""

    def __init__(self, root_pid: int):
        self.root = root_pid
        self.peak_rss = 0.0
        self.cpu: dict[int, float] = {}
        self.peak_cpu_pct = 0.0
        self.start_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        """Record one sample; returns the group's CPU seconds so far."""
        rss = 0.0
        for pid in [self.root, *_children(self.root)]:
            got = _proc_stat(pid)
            if got is not None:
                rss += got[0]
                self.cpu[pid] = got[1]
        self.peak_rss = max(self.peak_rss, rss)
        return sum(self.cpu.values())

    def _run(self) -> None:
        last_total, last_at = self.start_cpu, time.monotonic()
        while not self._stop.wait(1.0):
            total, at = self._sample(), time.monotonic()
            self.peak_cpu_pct = max(self.peak_cpu_pct, 100 * (total - last_total) / (at - last_at))
            last_total, last_at = total, at

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds used since the sampler started (not the process's start-up)."""
        return sum(self.cpu.values()) - self.start_cpu

    def __enter__(self) -> Sampler:
        self.start_cpu = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the night ---------------------------------------------------------------------------

PAGE = 200  # the most the Prefect API returns at once
HISTORY_WAIT = 120  # seconds the task-run count may keep growing after the last run ends
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class PrefectApi:
    """The few REST calls the night's audit needs, read straight from the server's API (the
    report checks Prefect's record; it does not need Prefect's client to do it)."""

    def __init__(self, api_url: str):
        self.http = httpx.Client(base_url=api_url, timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.http.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def paged(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.post(path, {**body, "limit": PAGE, "offset": len(found)})
            found += page
            if len(page) < PAGE:
                return found

    def __enter__(self) -> PrefectApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def generate_fleet(root: Path, params: FleetParams) -> list[Manifest]:
    """N small clinics of ``min_images`` to ``max_images`` images each (every special case
    of the generator included: bad files, unresolved patients, deleted rows)."""
    rng = random.Random(params.seed)
    clinics = []
    for i in range(params.clinics):
        wanted = rng.randint(params.min_images, params.max_images)
        patients = max(8, wanted // 5)  # about 5 images per patient (4 to 6)
        clinics.append(
            generate_clinic(
                root / f"fleet-{i:03d}",
                clinic_id=f"fleet-{i:03d}",
                patients=patients,
                images_per_patient=(4, 6),
                seed=params.seed * 1000 + i,
                large_files=0,
                scale=0.02,
            )
        )
    return clinics


def schedule_start(params: FleetParams, now: datetime | None = None) -> datetime:
    """The first due time: whole minutes ahead, leaving time to deploy every clinic."""
    now = now or datetime.now(UTC)
    margin = timedelta(seconds=15 + 0.6 * params.clinics)
    return (now + margin).replace(second=0, microsecond=0) + timedelta(minutes=1)


def due_times(params: FleetParams, start: datetime) -> list[datetime]:
    """Clinic i is due ``floor(i * window / N)`` minutes after ``start`` (cron: minutes)."""
    return [
        start + timedelta(minutes=math.floor(i * params.window_minutes / params.clinics))
        for i in range(params.clinics)
    ]


@contextlib.contextmanager
def _prefect_on_postgres(work: Path) -> Iterator[tuple[PrefectServer, PostgresServer]]:
    with PostgresServer(fsync=True) as pg:
        password = "prefect-" + pg.superuser_password
        pg.create_database("prefect", "prefect", password)
        pg.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm", database="prefect")
        url = f"postgresql+asyncpg://prefect:${{PREFECT_SERVER_DATABASE_PASSWORD}}@127.0.0.1:{pg.port}/prefect"
        settings = {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": url,
            "PREFECT_SERVER_DATABASE_PASSWORD": password,
        }
        with PrefectServer(work / "prefect-home", extra_env=settings, timeout=240) as server:
            yield server, pg


def run_night(work: Path, params: FleetParams, log=print) -> NightReport:  # noqa: C901, PLR0915
    report = NightReport(params.clinics, params.workers, params.window_minutes)
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    clinics = generate_fleet(work / "clinics", params)
    report.objects_expected = sum(len(c.expected) for c in clinics)
    log(
        f"fleet: {len(clinics)} clinics, {report.objects_expected} images expected "
        f"({time.monotonic() - t0:.0f} s)"
    )
    mapping: dict[str, dict[str, str]] = {}
    for clinic in clinics:
        mapping.update(json.loads(Path(clinic.mapping_path).read_text(encoding="utf-8")))
    names = [c.clinic_id for c in clinics]

    with (
        SeaweedS3(work / "s3", buckets=(BUCKET,)) as s3,
        ResolverServer(mapping) as resolver,
        _prefect_on_postgres(work) as (server, pg),
    ):
        env = server.env()
        log(f"fleet: Prefect server on PostgreSQL at {server.api_url}")
        create_work_pool(WORK_POOL, env)
        start = schedule_start(params)
        dues = due_times(params, start)
        last_due = max(dues)
        folder = work / "deployments"
        (work / "configs").mkdir(exist_ok=True)
        for clinic, due in zip(clinics, dues, strict=True):
            config = write_config(
                work / "configs" / f"{clinic.clinic_id}.yaml",
                clinic,
                resolver_url=resolver.url,
                endpoint=s3.endpoint,
                state_dir=work / "state" / clinic.clinic_id,
            )
            write_deployment_file(
                folder,
                config,
                schedule={"cron": f"{due.minute} {due.hour} * * *", "timezone": "UTC"},
                description=f"fleet clinic, due {due:%H:%M} UTC",
            )
        render_to(folder, work / "prefect.yaml")
        deploy_all(work / "prefect.yaml", env)
        if datetime.now(UTC) >= start:
            report.problems.append(f"deploying took until after the first due time {start}")
        report.setup_s = time.monotonic() - t0
        log(f"fleet: deployed; first run due {start:%H:%M} UTC, set-up {report.setup_s:.0f} s")

        workers = [
            start_worker(
                WORK_POOL,
                [],
                {**env, **s3.env()},
                work / f"worker-{i}.log",
                limit=params.worker_limit,
            )
            for i in range(params.workers)
        ]
        deadline = last_due + timedelta(minutes=max(5, params.window_minutes // 2))
        runs: list[dict[str, Any]] = []
        try:
            with (
                Sampler(server.proc.pid) as server_stats,  # type: ignore[union-attr]
                Sampler(pg.postmaster_pid()) as pg_stats,
                PrefectApi(server.api_url) as api,
            ):
                fleet = {"deployments": {"name": {"any_": names}}}
                # the scheduler also creates the next days' runs: this night's only
                night = {
                    **fleet,
                    "flow_runs": {
                        "expected_start_time": {
                            "after_": (start - timedelta(seconds=1)).isoformat(),
                            "before_": (last_due + timedelta(seconds=1)).isoformat(),
                        }
                    },
                }
                while datetime.now(UTC) < deadline:
                    runs = api.paged("/flow_runs/filter", night)
                    final = [r for r in runs if r["state"] and r["state"]["type"] in FINAL]
                    if len(final) >= len(names) and len(runs) == len(final):
                        break
                    time.sleep(5)
                else:
                    report.problems.append("not every run finished before the deadline")
                report.server_peak_rss_mb = server_stats.peak_rss
                report.server_cpu_s = server_stats.cpu_seconds
                report.server_peak_cpu_pct = server_stats.peak_cpu_pct
                report.postgres_peak_rss_mb = pg_stats.peak_rss
                report.postgres_cpu_s = pg_stats.cpu_seconds

                deployments = {d["id"]: d["name"] for d in api.paged("/deployments/filter", fleet)}
                by_clinic: dict[str, list[dict[str, Any]]] = {}
                for run in runs:
                    by_clinic.setdefault(deployments.get(run["deployment_id"], "?"), []).append(run)
                    report.runs_created_by_scheduler += bool(run["auto_scheduled"])
                    kind = (run["state"] or {}).get("type")
                    report.runs_completed += kind == "COMPLETED"
                    report.runs_failed += kind == "FAILED"
                    report.runs_other += kind not in ("COMPLETED", "FAILED")
                    started, due = _when(run["start_time"]), _when(run["expected_start_time"])
                    if started and due:
                        delay = (started - due).total_seconds()
                        report.max_start_delay_s = max(report.max_start_delay_s, delay)
                        report.runs_late += delay > LATE_AFTER.total_seconds()
                dues = [d for r in runs if (d := _when(r["expected_start_time"]))]
                ends = [e for r in runs if (e := _when(r["end_time"]))]
                if dues and ends:
                    report.night_wall_s = (max(ends) - min(dues)).total_seconds()
                for clinic_runs in by_clinic.values():
                    spans = sorted(
                        (_when(r["start_time"]), _when(r["end_time"]))
                        for r in clinic_runs
                        if r["start_time"]
                    )
                    for (_, end), (begin, _) in zip(spans, spans[1:], strict=False):
                        report.overlapping_runs += end is None or begin < end
                missing = set(names) - set(by_clinic)
                if missing:
                    report.problems.append(f"no run of {len(missing)} clinic(s)")
                ids = [r["id"] for r in runs]
                wanted = {"flow_run_id": {"any_": ids}, "key": {"like_": "sync-summary-"}}
                summaries = api.paged("/artifacts/filter", {"artifacts": wanted})
                for artifact in summaries:
                    table = artifact["data"]
                    rows = json.loads(table) if isinstance(table, str) else (table or [])
                    batches = next((r["count"] for r in rows if r["outcome"] == "batches"), 0)
                    report.task_runs_expected += BOOKKEEPING_TASKS + int(batches)
                # task runs reach the database through the server's event pipeline, a little
                # after their flow run ends: count until the count stops growing
                settled_from = time.monotonic()
                count, still = -1, 0
                while ids and still < 3 and time.monotonic() - settled_from < HISTORY_WAIT:
                    now_count = api.post("/task_runs/count", {"flow_runs": {"id": {"any_": ids}}})
                    still = still + 1 if now_count == count else 0
                    count = now_count
                    if count == report.task_runs_expected:
                        break
                    time.sleep(2)
                report.task_runs_recorded = max(count, 0)
                report.history_settled_s = time.monotonic() - settled_from
                if len(summaries) != len(runs):
                    report.problems.append(f"{len(summaries)} summaries for {len(runs)} runs")
        finally:
            stop_processes(workers)

        client = s3.client()
        stored: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="images/"
        ):
            for obj in page.get("Contents", []):
                stored[obj["Key"]] = obj["Size"]
        report.objects_in_s3 = len(stored)
        sample_rng = random.Random(params.seed)
        checked = same = 0
        for clinic in sample_rng.sample(clinics, min(20, len(clinics))):
            if not clinic.expected:
                continue
            entry = sample_rng.choice(clinic.expected)
            prefix = f"images/{entry['patient_guid']}/{clinic.clinic_id}_{entry['image_id']}_"
            keys = [k for k in stored if k.startswith(prefix)]
            checked += 1
            if len(keys) == 1:
                body = client.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
                same += body == Path(clinic.pdata_root, entry["path"]).read_bytes()
        report.sample_identical = f"{same} of {checked}"
        if same != checked:
            report.problems.append("an object in the sample differs from its source")
        report.database_mb = pg.scalar("SELECT pg_database_size('prefect')", "prefect") / 2**20
        check_fleet_report(report, work / "reports", env, clinics, stored)
    return report


def check_fleet_report(
    report: NightReport,
    out_dir: Path,
    env: dict[str, str],
    clinics: list[Manifest],
    stored: dict[str, int],
) -> None:
    """The night as the fleet report tells it (``pdata-sync fleet-report``, the product's
    command, against the night's server): one row per clinic, each with the clinic's
    objects in S3 as archived and as uploaded in 7 days, nothing left or failed, the
    generator's bad files as rejected, a Completed last sync."""
    import pandas as pd

    out = subprocess.run(
        [str(Path(sys.executable).parent / "pdata-sync"), "fleet-report", "--json",
         "--out-dir", str(out_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if out.returncode != 0:
        report.problems.append(f"fleet-report exited {out.returncode}: {out.stderr[-500:]}")
        return
    result = json.loads(out.stdout)
    report.fleet_report_headline = result["headline"]
    report.fleet_report_chart = result["chart"]
    frame = pd.read_parquet(result["parquet"]).set_index("clinic_id")
    right = 0
    for clinic in clinics:
        if clinic.clinic_id not in frame.index:
            report.problems.append(f"fleet report: no row for {clinic.clinic_id}")
            continue
        row = frame.loc[clinic.clinic_id]
        in_s3 = sum(f"/{clinic.clinic_id}_" in key for key in stored)
        wrong = {
            name: (row[name], want)
            for name, want in (
                ("images_archived", in_s3),
                ("images_7d", in_s3),
                ("backlog_images", 0),
                ("failed", 0),
                ("rejected", len(clinic.rejected_paths)),
                ("syncs_failed_7d", 0),
                ("last_sync_state", "COMPLETED"),
            )
            if row[name] != want
        }
        if pd.isna(row["hours_since_success"]) or row["bytes_archived"] <= 0:
            wrong["last success / bytes"] = (row["hours_since_success"], row["bytes_archived"])
        if wrong:
            report.problems.append(f"fleet report, {clinic.clinic_id}: {wrong}")
        else:
            right += 1
    if len(frame) != len(clinics):
        report.problems.append(f"fleet report: {len(frame)} rows for {len(clinics)} clinics")
    if not Path(result["chart"]).read_bytes().startswith(b"\x89PNG"):
        report.problems.append("fleet report: the chart is not a PNG")
    report.fleet_report_rows_right = f"{right} of {len(clinics)}"
