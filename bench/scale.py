"""Scale: 100,000 small DICOM files in 10,000 patient folders, a clinic's night by night.

    make bench-scale      # or: .venv/bin/python bench/scale.py [--patients 10000]

Runs the real ``pdata-sync sync`` (incremental: true) against a running Prefect server and
SeaweedFS, and ``s5cmd sync`` of the same tree in the same run: the first sync of each
(pdata-sync's data path alone, thumbnails: false, as s5cmd copies only; docs/adr/0013); a
no-change run; then the day (100 new images in 10 folders, 2 patients the resolver newly
knows): pdata-sync's incremental run (drawing the thumbnails of what it uploads, as clinics
run) against s5cmd's sync, which walks everything; a ``--full`` run (every patient listed in
S3, as after ``transfer.recheck_days``); and a no-change run on a new worker (no catalog, no
resolver cache: listing and content comparison). Prints wall time, files/s, task runs (all
must be recorded) and each command's peak RSS, checks the targets of issue 18 and draws
bench/scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import (
    CLI,
    MB,
    draw_chart,
    fresh_bucket,
    machine,
    make_tree,
    run_measured,
    servers,
    wait_until_idle,
)

from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config


def task_runs(api_url: str, flow_run_id: str) -> dict[str, int]:
    """Task runs of one flow run recorded by the server, by state type."""
    os.environ["PREFECT_API_URL"] = api_url
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> dict[str, int]:
        counts: dict[str, int] = {}
        async with get_client() as client:
            offset = 0
            while True:
                page = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    limit=200,
                    offset=offset,
                )
                for run in page:
                    state = run.state_type.value if run.state_type else "NONE"
                    counts[state] = counts.get(state, 0) + 1
                if len(page) < 200:
                    return counts
                offset += 200

    # task runs are recorded through the server's event pipeline, shortly after the flow
    # run ends, and some may not be there yet at the first read (a read of 4 of a run's 11
    # was seen): read until every one is in a final state and three reads a second apart
    # agree (or 60 s have passed)
    deadline = time.monotonic() + 60
    seen: list[dict[str, int]] = []
    while True:
        counts = asyncio.run(read())
        seen = [*seen[-2:], counts]
        if len(seen) == 3 and seen[0] == seen[1] == counts and set(counts) <= FINAL:
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(1)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


NEW_IMAGES = 100  # the day's new images: 10 in each of 10 patients
UNRESOLVED = 2  # patients the resolver learns of during the day


def add_new_images(tree, count: int) -> list[Path]:
    """``count`` new images (and media rows) in the first patients' folders, as Sidexis
    writes them during a day; their paths, for :func:`remove_new_images`."""
    import random
    import sqlite3

    from pdata_sync.demo.generate import write_dicom

    db = sqlite3.connect(tree.database_path)
    paths = []
    for n in range(count):
        pid, image_id = 1000 + n // 10, 10_000_000 + n
        path = Path(tree.pdata_root) / f"P_{pid}" / f"0000_{image_id}.dcm"
        write_dicom(path, rng=random.Random(n), clinic_id=tree.clinic_id, patient_id=pid,
                    patient_name="Bench^Patient", birth_date="19700101", image_id=image_id,
                    modality="IO", rows=32, cols=32)  # fmt: skip
        db.execute("INSERT INTO MediaBase (MediaBaseId, PatientId, Name) VALUES (?, ?, ?)",
                   (image_id, pid, "Bitewing"))  # fmt: skip
        paths.append(path)
    db.commit()
    db.close()
    return paths


def remove_new_images(tree, paths: list[Path]) -> None:
    """Put the cached tree back as it was."""
    import sqlite3

    for path in paths:
        path.unlink(missing_ok=True)
    db = sqlite3.connect(tree.database_path)
    db.execute("DELETE FROM MediaBase WHERE MediaBaseId >= 10000000")
    db.commit()
    db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--files-per-patient", type=int, default=10)
    parser.add_argument("--file-kb", type=int, default=4)
    parser.add_argument("--workdir", default=".bench/scale")
    parser.add_argument("--chart", type=Path, default=Path(__file__).parent / "scale.png")
    args = parser.parse_args()
    s5cmd = Path(__file__).resolve().parent.parent / ".bench-venv" / "bin" / "s5cmd"
    if not s5cmd.exists():
        sys.exit("missing s5cmd: run `make bench-setup` first")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tree = make_tree(
        work / "tree",
        patients=args.patients,
        files_per_patient=args.files_per_patient,
        file_bytes=args.file_kb * 1024,
    )
    print(f"tree: {tree.files} files, {tree.bytes / MB:.0f} MB ({time.perf_counter() - t0:.0f} s)")
    remove_new_images(tree, [])  # a run cut short may have left the day's rows behind
    mapping = json.loads(Path(tree.mapping_path).read_text())
    cards = mapping[tree.clinic_id]
    late_cards = {c: cards.pop(c) for c in sorted(cards)[-UNRESOLVED:]}  # unknown at first
    new_paths: list[Path] = []
    rows = []
    with servers(work / "servers") as (s3, prefect), ResolverServer(mapping) as resolver:
        fresh_bucket(s3.client(), "dental-images")  # type: ignore[attr-defined]
        state = work / "state"
        import shutil

        shutil.rmtree(state, ignore_errors=True)
        config = write_config(
            work / "scale.yaml",
            tree,
            resolver_batch_size=500,
            resolver_url=resolver.url,
            endpoint=s3.endpoint,  # type: ignore[attr-defined]
            state_dir=state,
        )
        config.write_text(config.read_text() + "incremental: true\n")
        # the first sync is compared with s5cmd's on the data path alone (docs/adr/0013);
        # every later run draws the thumbnails of what it uploads, as clinics run
        data_only = config.with_name("scale-data.yaml")
        data_only.write_text(config.read_text() + "thumbnails: false\n")
        env = {**os.environ, **prefect.env(), **s3.env()}  # type: ignore[attr-defined]
        s5_env = {**env, "AWS_DEFAULT_REGION": "us-east-1"}
        s5_env.pop("AWS_CA_BUNDLE", None)
        sync = [CLI, "sync", "--config", str(config), "--json"]
        sync_data = [CLI, "sync", "--config", str(data_only), "--json"]
        s5 = [str(s5cmd), "--endpoint-url", s3.endpoint, "sync",  # type: ignore[attr-defined]
              f"{tree.pdata_root}/", "s3://dental-images/s5cmd/"]  # fmt: skip

        def measure(label: str, cmd: list[str], files: int) -> bool:
            # against idle servers: no command pays for the servers' work on the one before
            wait_until_idle(s3, prefect)
            m = run_measured(cmd, s5_env if cmd[0] == str(s5cmd) else env)
            if m.returncode != 0:
                print(f"{label}: exit {m.returncode}\n{m.stderr[-3000:]}", file=sys.stderr)
                return False
            summary = json.loads(m.stdout) if cmd[0] == CLI else None
            runs = (
                task_runs(prefect.api_url, summary["flow_run_id"])  # type: ignore[attr-defined]
                if summary
                else {}
            )
            rows.append((label, m, summary, runs, files))
            print(f"  {label}: {m.seconds:.1f} s", file=sys.stderr)
            return True

        try:
            steps = [
                ("pdata-sync first sync (data)", sync_data, tree.files),
                ("s5cmd first sync", s5, tree.files),
                ("pdata-sync no change", sync, tree.files),
            ]
            if not all(measure(*step) for step in steps):
                return 1
            # the day: new images, and patients the resolver now knows
            new_paths = add_new_images(tree, NEW_IMAGES)
            resolver.state.mapping[tree.clinic_id].update(late_cards)
            files = tree.files + NEW_IMAGES
            steps = [
                ("pdata-sync incremental", sync, files),
                ("s5cmd sync (the day)", s5, files),
                ("pdata-sync --full (recheck due)", [*sync, "--full"], files),
            ]
            if not all(measure(*step) for step in steps):
                return 1
            shutil.rmtree(state)  # a new worker: no catalog, no resolver cache
            if not measure("pdata-sync new worker", sync, files):
                return 1
        finally:
            remove_new_images(tree, new_paths)
    by_label = {r[0]: r for r in rows}
    print(f"machine: {machine()}")
    print(
        f"{'run':32} {'wall':>8} {'files/s':>8} {'uploaded':>9} {'unchanged':>9} "
        f"{'folders':>8} {'task runs':>10} {'peak RSS':>9}"
    )
    for label, m, summary, runs, files in rows:
        uploaded = f"{summary['uploaded']:9d}" if summary else f"{'':9}"
        unchanged = f"{summary['unchanged']:9d}" if summary else f"{'':9}"
        folders = f"{summary['folders']:8d}" if summary else f"{'':8}"
        print(
            f"{label:32} {m.seconds:7.1f}s {files / m.seconds:8.0f} {uploaded} {unchanged} "
            f"{folders} {sum(runs.values()):10d} {m.peak_rss_mb:6.0f} MB  {runs or ''}"
        )
    inc, s5_day = by_label["pdata-sync incremental"], by_label["s5cmd sync (the day)"]
    first, s5_first = by_label["pdata-sync first sync (data)"], by_label["s5cmd first sync"]
    new_worker = by_label["pdata-sync new worker"]
    ratio = inc[1].seconds / s5_day[1].seconds
    print(f"incremental / s5cmd sync of the day: {ratio:.2f}x")
    print(f"first sync files/s, pdata-sync / s5cmd: {s5_first[1].seconds / first[1].seconds:.2f}x")
    checks = {
        "incremental <= 8 s": inc[1].seconds <= 8,
        "incremental <= 0.5x s5cmd": ratio <= 0.5,
        "incremental uploaded the day's images": inc[2]["uploaded"]
        == NEW_IMAGES + UNRESOLVED * args.files_per_patient,
        "first sync files/s >= s5cmd": first[1].seconds <= s5_first[1].seconds,
        "new worker no-change <= 60 s": new_worker[1].seconds <= 60,
        "peak RSS <= 500 MB": max(r[1].peak_rss_mb for r in rows if r[2]) <= 500,
        "every task run completed": all(set(r[3]) <= {"COMPLETED"} for r in rows),
    }
    for name, met in checks.items():
        print(f"  {'met   ' if met else 'MISSED'} {name}")
    draw_chart(
        [(label, m.seconds, files / m.seconds) for label, m, _, _, files in rows],
        args.chart,
        f"{tree.files:,} files in {args.patients:,} folders: pdata-sync runs and s5cmd",
    )
    print(f"chart: {args.chart}", file=sys.stderr)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
