"""A simulated night of many clinics on one Prefect server (issue: many clinics).

    make bench-fleet     # or: .venv/bin/python bench/fleet.py [--clinics 200] [--workers 4]
                         #        [--window 20] [--json]

A real PostgreSQL and a real Prefect server on it (ops/prefect-server.env and the
PostgreSQL settings of ops/), N generated small clinics (30 to 300 images each, with bad
files and unresolved patients), their deployments rendered from generated deployments/
files into a temporary prefect.yaml with schedules spread over the window, M process
workers polling the pool, one SeaweedFS and one resolver, all on 127.0.0.1. Prints: runs
created by the scheduler, completed, failed, late, overlapping runs of one clinic (must be
0), task runs recorded against expected (must be equal), objects in S3 against expected
(must be equal, a sample byte-identical), the server's and PostgreSQL's peak RSS and CPU,
the database size and the night's wall time. It ends with the fleet report of that night
(`pdata-sync fleet-report` against the night's server), checks each clinic's row against
S3, and copies its chart to bench/fleet-report.png. Exit 1 when the history or a row is
wrong.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

from tests.kit.fleet import FleetParams, run_night


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clinics", type=int, default=FleetParams.clinics)
    parser.add_argument("--workers", type=int, default=FleetParams.workers)
    parser.add_argument(
        "--window",
        type=int,
        default=FleetParams.window_minutes,
        help="minutes over which the clinics' schedules are spread",
    )
    parser.add_argument("--worker-limit", type=int, default=FleetParams.worker_limit)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    params = FleetParams(
        clinics=args.clinics,
        workers=args.workers,
        window_minutes=args.window,
        worker_limit=args.worker_limit,
    )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pdata-fleet-"))
    print(f"bench-fleet on {machine()}: {params}", file=sys.stderr)
    t0 = time.monotonic()
    report = run_night(work, params, log=lambda line: print(line, file=sys.stderr))
    print(f"bench-fleet: {time.monotonic() - t0:.0f} s in all; work folder {work}", file=sys.stderr)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    if report.fleet_report_chart:
        shutil.copyfile(report.fleet_report_chart, Path(__file__).with_name("fleet-report.png"))
        print("bench-fleet: the report's chart is bench/fleet-report.png", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
