"""Restore's rate: the demo clinic synced, then ``pdata-sync restore`` from S3 alone (an empty
catalog, as on a new machine) into a new folder, against s5cmd copying the same objects down
in the same run (issue 36).

    .venv/bin/python bench/restore.py [--runs 3] [--workdir .bench/restore]

Starts SeaweedFS, a Prefect server and the resolver on 127.0.0.1 and runs the real CLI, as
an operator would (defaults on). Each pdata-sync run is checked: every archived file back at
its own path with its own bytes. Prints medians of wall time, MB/s and files/s, the ratio to
s5cmd, and a resumed run (everything already there). Loopback: this measures the worker's
CPU and disk, not a clinic's link.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from _common import CLI, MB, ROOT, machine, run_measured, servers

from pdata_sync.archive.restore import restore
from pdata_sync.demo.generate import generate_clinic
from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config

BENCH_BIN = ROOT / ".bench-venv" / "bin"


def identical(manifest: object, target: Path) -> int:
    """How many archived files are back byte for byte; exits when one is not."""
    paths = sorted({e["path"] for e in manifest.expected})  # type: ignore[attr-defined]
    for rel in paths:
        source = Path(manifest.pdata_root, rel).read_bytes()  # type: ignore[attr-defined]
        if (target / rel).read_bytes() != source:
            sys.exit(f"restore: {rel} differs from the source")
    return len(paths)


def data_path_client(config: Path) -> tuple[object, object]:
    """The S3 client and config a restore run would use, made in this process."""
    from pdata_sync.archive.s3_client import make_client
    from pdata_sync.base.config import load_config

    cfg = load_config(config)
    return make_client(cfg.s3, cfg.transfer), cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=".bench/restore")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    s5cmd = BENCH_BIN / "s5cmd"
    if not s5cmd.exists():
        sys.exit("missing s5cmd: run `make bench-setup` first")

    clinic = generate_clinic(work / "clinic")  # the demo clinic, as `make demo` makes it
    mapping = json.loads(Path(clinic.mapping_path).read_text())
    with servers(work) as (s3, prefect), ResolverServer(mapping) as resolver:
        config = write_config(
            work / "clinic.yaml",
            clinic,
            resolver_url=resolver.url,
            endpoint=s3.endpoint,
            state_dir=work / "state",
        )
        fresh = write_config(
            work / "new-machine.yaml",
            clinic,
            resolver_url=resolver.url,
            endpoint=s3.endpoint,
            state_dir=work / "empty-state",
        )
        env = {**os.environ, **prefect.env(), **s3.env()}
        synced = run_measured([CLI, "sync", "--config", str(config), "--json"], env)
        if synced.returncode != 0:
            print(synced.stderr[-3000:], file=sys.stderr)
            return 1
        listed = s3.client().list_objects_v2(Bucket="dental-images", Prefix="images/")
        objects = listed["KeyCount"]
        size = sum(o["Size"] for o in listed["Contents"])

        os.environ.update(s3.env())  # the in-process data path's credentials
        client, cfg = data_path_client(fresh)
        mine, theirs, resumed, core = [], [], [], []
        for run in range(args.runs):
            target = work / f"restored-{run}"
            out = run_measured(
                [CLI, "restore", "--config", str(fresh), "--to", str(target), "--json"], env
            )
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            files = identical(clinic, target)
            mine.append(out.seconds)
            again = run_measured(
                [CLI, "restore", "--config", str(fresh), "--to", str(target), "--json"], env
            )
            resumed.append(again.seconds)
            shutil.rmtree(target)
            started = time.perf_counter()  # the same work without the CLI and Prefect
            restore(client, cfg.s3, cfg.clinic_id, target, pdata_root=cfg.pdata_root)
            core.append(time.perf_counter() - started)
            identical(clinic, target)
            shutil.rmtree(target)
            down = work / f"s5cmd-{run}"
            ref = run_measured(
                [
                    str(s5cmd),
                    "--endpoint-url",
                    s3.endpoint,
                    "cp",
                    "s3://dental-images/images/*",
                    f"{down}/",
                ],  # fmt: skip
                env,
            )
            if ref.returncode != 0:
                print(ref.stderr[-3000:], file=sys.stderr)
                return 1
            theirs.append(ref.seconds)
            shutil.rmtree(down)

    p, s, r, c = (statistics.median(x) for x in (mine, theirs, resumed, core))
    print(f"machine: {machine()}")
    print(
        f"demo clinic: {objects} objects, {size / MB:.0f} MB in S3; {files} files restored, "
        "each byte-identical to the source; medians of "
        f"{args.runs} run(s), whole CLI processes"
    )
    print(f"pdata-sync restore: {p:6.2f} s  {size / MB / p:6.1f} MB/s  {objects / p:6.0f} files/s")
    print(f"s5cmd cp:           {s:6.2f} s  {size / MB / s:6.1f} MB/s  {objects / s:6.0f} files/s")
    print(f"its data path:      {c:6.2f} s  {size / MB / c:6.1f} MB/s  {objects / c:6.0f} files/s"
          "  (restore() in-process: no CLI, no Prefect run)")  # fmt: skip
    print(f"pdata-sync / s5cmd: {p / s:.2f}x; its data path / s5cmd: {c / s:.2f}x")
    print(f"resumed, everything already there: {r:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
