"""Scale: 100,000 small DICOM files in 10,000 patient folders (issue 5 item 2).

    make bench-scale      # or: .venv/bin/python bench/scale.py [--patients 10000]

Runs the real ``pdata-sync sync`` against a running Prefect server and SeaweedFS: a first
sync, then a no-change re-run. Prints their wall times, the Prefect task runs each created
(all must be recorded), and the client's peak RSS. Targets: no-change re-run <= 60 s,
<= 500 task runs, peak RSS <= 500 MB.
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
    machine,
    make_tree,
    run_measured,
    servers,
)

from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config
from pdata_sync.demo.seaweed import empty_bucket


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

    return asyncio.run(read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--files-per-patient", type=int, default=10)
    parser.add_argument("--file-kb", type=int, default=4)
    parser.add_argument("--workdir", default=".bench/scale")
    args = parser.parse_args()
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
    mapping = json.loads(Path(tree.mapping_path).read_text())
    with servers(work / "servers") as (s3, prefect), ResolverServer(mapping) as resolver:
        empty_bucket(s3.client(), "dental-images")  # type: ignore[attr-defined]
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
        env = {**os.environ, **prefect.env(), **s3.env()}  # type: ignore[attr-defined]
        cmd = [CLI, "sync", "--config", str(config), "--json"]
        rows = []
        for label in ("first sync", "no-change re-run"):
            m = run_measured(cmd, env)
            if m.returncode != 0:
                print(m.stderr[-3000:], file=sys.stderr)
                return 1
            summary = json.loads(m.stdout)
            runs = task_runs(prefect.api_url, summary["flow_run_id"])  # type: ignore[attr-defined]
            rows.append((label, m, summary, runs))
    print(f"machine: {machine()}")
    print(
        f"{'run':18} {'wall':>8} {'files/s':>8} {'uploaded':>9} {'unchanged':>9} "
        f"{'task runs':>10} {'peak RSS':>9}"
    )
    for label, m, summary, runs in rows:
        print(
            f"{label:18} {m.seconds:7.1f}s {tree.files / m.seconds:8.0f} "
            f"{summary['uploaded']:9d} {summary['unchanged']:9d} "
            f"{sum(runs.values()):10d} {m.peak_rss_mb:6.0f} MB   {runs}"
        )
    nochange = rows[1]
    ok = (
        nochange[1].seconds <= 60
        and all(sum(r[3].values()) <= 500 for r in rows)
        and all(set(r[3]) == {"COMPLETED"} for r in rows)
        and max(r[1].peak_rss_mb for r in rows) <= 500
        and nochange[2]["unchanged"] == tree.files
    )
    print(
        f"targets (no-change <= 60 s, <= 500 task runs all completed, RSS <= 500 MB): "
        f"{'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
