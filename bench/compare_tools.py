"""pdata-sync against s5cmd, rclone and aws s3 sync: same machine, same SeaweedFS, same run.

    make bench            # or: .venv/bin/python bench/compare_tools.py [--runs 3]

For each case (2,000 x ~300 KB and 20 x ~40 MB real DICOM files) and each round, the tools
run in a rotating order: an initial upload into an empty bucket (dropped and created again),
then a no-change re-run, each command started against idle servers.
pdata-sync runs as in production: the whole ``pdata-sync sync`` process against a running
Prefect server, with its database, resolver, DICOM header reads, checksums and catalog (its
state is wiped before each initial run), twice: ``pdata-sync`` as clinics run it, drawing
and storing each image's thumbnail during the sync, and ``pdata-sync-data`` (thumbnails:
false), its data path alone, which is what the other tools do (docs/adr/0013); with
``--tools ...,pdata-sync-all-cores`` also as before ``transfer.cpu_threads`` (CPU work in
as many threads as cores). Prints medians, min-max, files/s, MB/s, the client's own CPU
(user + system) per 1,000 images, peak RSS and each against s5cmd, and draws
bench/compare-{case}.png.

    .venv/bin/python bench/compare_tools.py --link 20:100 --cases wan

puts a shaped link (bench/_link.py: 20 ms round trip, 100 Mbit/s up, shared) between every
tool and the server: a clinic's uplink instead of loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

from _common import (
    CLI,
    MB,
    ROOT,
    Measured,
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
from tests.kit.link import maybe_link

BUCKET = "dental-images"
BENCH_BIN = ROOT / ".bench-venv" / "bin"
# pdata-sync as clinics run it (thumbnails drawn and stored during the sync), and its data
# path alone ("pdata-sync-data": thumbnails: false), which is what the other tools do.
TOOLS = (
    "pdata-sync",
    "pdata-sync-data",
    "pdata-sync-all-cores",
    "s5cmd",
    "rclone",
    "aws",
    "prefect-floor",
)
PDATA_SYNC = ("pdata-sync", "pdata-sync-data", "pdata-sync-all-cores")
DEFAULT_TOOLS = tuple(t for t in TOOLS if t != "pdata-sync-all-cores")
# pdata-sync's variants: the clinic's config with these settings
VARIANTS: dict[str, dict] = {
    "pdata-sync-data": {"thumbnails": False},
    # CPU work in as many threads as cores, as before transfer.cpu_threads (default: one less)
    "pdata-sync-all-cores": {"transfer": {"cpu_threads": os.cpu_count() or 1}},
}
# The least a deployable Prefect flow run costs as a whole process on this machine, against
# the same server: import Prefect, run a flow with one parameter (a pydantic model, as every
# deployment takes one) and one task, exit. No sync, no S3. The parameter is not free: Prefect
# imports FastAPI to serialise it and pydantic.v1 to check its type (about 0.4 s here). Like
# the pdata-sync CLI, it imports with garbage collection off, then freezes what it loaded, and
# skips Python's final garbage-cycle searches (gc.freeze at exit). Like pdata-sync's flows, it
# does not wait for Prefect's heartbeat thread at the end of the run
# (pdata_sync/flows/_prefect_engine.py; 0.5 s on average otherwise).
PREFECT_FLOOR = f"""
import atexit, gc, sys
atexit.register(gc.freeze)
gc.disable()
sys.path.insert(0, {str(ROOT)!r})
from pydantic import BaseModel
from prefect import flow, task
import pdata_sync.flows._prefect_engine
gc.freeze()
gc.enable()
class Settings(BaseModel):
    name: str = "floor"
@task
def one(settings: Settings): return 1
@flow
def floor(settings: Settings = Settings()): return one(settings)
floor()
"""
CASES = {
    "small": {"patients": 200, "files_per_patient": 10, "file_bytes": 315 * 1024},
    "large": {"patients": 4, "files_per_patient": 5, "file_bytes": 42 * MB},
    # issue 18's "10,000 x 315 KB initial <= 1.1x s5cmd" (3.1 GB): --cases medium --runs 1
    "medium": {"patients": 1000, "files_per_patient": 10, "file_bytes": 315 * 1024},
    # for --link: 500 x 315 KB (155 MB) is about 12 s at 100 Mbit/s
    "wan": {"patients": 100, "files_per_patient": 5, "file_bytes": 315 * 1024},
    # a fifth of make bench-scale's tree (4 KB files): first-sync cost per file, quickly
    "many": {"patients": 2000, "files_per_patient": 10, "file_bytes": 4 * 1024},
}


def tool_paths() -> dict[str, str]:
    paths = {
        "s5cmd": str(BENCH_BIN / "s5cmd"),
        "aws": str(BENCH_BIN / "aws"),
        "rclone": shutil.which("rclone") or "/usr/bin/rclone",
    }
    missing = [name for name, path in paths.items() if not Path(path).exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `make bench-setup` first")
    return paths


def variant_config(config: Path, tool: str) -> Path:
    """Where the config of a pdata-sync variant is (see :func:`write_variant`)."""
    return config.with_name(f"{config.stem}-{tool}{config.suffix}")


def write_variant(config: Path, tool: str) -> None:
    """The config of a pdata-sync variant: the clinic's, with the variant's settings."""
    import yaml

    data = yaml.safe_load(config.read_text())
    for key, value in VARIANTS[tool].items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    variant_config(config, tool).write_text(yaml.safe_dump(data, sort_keys=False))


def command(tool: str, paths: dict[str, str], src: str, endpoint: str, config: Path) -> list[str]:
    target = f"{BUCKET}/{tool}/"
    if tool in PDATA_SYNC:
        if tool in VARIANTS:
            config = variant_config(config, tool)
        return [CLI, "sync", "--config", str(config), "--json"]
    if tool == "prefect-floor":
        return [sys.executable, "-c", PREFECT_FLOOR]
    if tool == "s5cmd":
        return [paths["s5cmd"], "--endpoint-url", endpoint, "sync", f"{src}/", f"s3://{target}"]
    if tool == "aws":
        return [paths["aws"], "--endpoint-url", endpoint, "s3", "sync", src, f"s3://{target}"]
    return [paths["rclone"], "sync", src, f"bench:{target}"]


def tool_env(base: dict[str, str], s3: object, endpoint: str) -> dict[str, str]:
    # The server is plain http on 127.0.0.1; a CA bundle in the environment only breaks
    # rclone 1.60 ("LoadCustomCABundleError"), so no tool gets one.
    base = {k: v for k, v in base.items() if k != "AWS_CA_BUNDLE"}
    return {
        **base,
        **s3.env(),  # type: ignore[attr-defined]
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENV_AUTH": "true",
        "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default="small,large")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS))
    parser.add_argument("--workdir", default=".bench/compare")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--wrap",
        default="",
        help="a command put before pdata-sync's first run of each round (e.g. a profiler)",
    )
    parser.add_argument(
        "--link", metavar="RTT_MS:UP_MBIT", help="a shaped link between the tools and the server"
    )
    parser.add_argument(
        "--chart",
        default=str(Path(__file__).parent / "compare"),
        help="draw each case's initial runs to {CHART}-{case}.png ('' for none)",
    )
    args = parser.parse_args()
    paths = tool_paths()
    tools = [t for t in TOOLS if t in args.tools.split(",")]
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}

    with (
        servers(work / "servers") as (s3, prefect),
        maybe_link(s3.endpoint, args.link) as endpoint,  # type: ignore[attr-defined]
    ):
        client = s3.client()  # type: ignore[attr-defined]
        env = tool_env({**os.environ, **prefect.env()}, s3, endpoint)  # type: ignore[attr-defined]
        if args.link:
            print(f"shaped link {args.link} (RTT ms : Mbit/s up) at {endpoint}", file=sys.stderr)
        for case in args.cases.split(","):
            tree = make_tree(work / f"tree-{case}", **CASES[case])
            mapping = json.loads(Path(tree.mapping_path).read_text())
            results[case] = {
                t: {"initial": [], "nochange": [], "rss": [], "cpu": []} for t in tools
            }
            with ResolverServer(mapping) as resolver:
                state = work / f"state-{case}"
                config = write_config(
                    work / f"{case}.yaml",
                    tree,
                    resolver_batch_size=500,
                    resolver_url=resolver.url,
                    endpoint=endpoint,
                    state_dir=state,
                )
                for variant in VARIANTS:
                    write_variant(config, variant)
                for round_ in range(args.runs):
                    order = tools[round_ % len(tools) :] + tools[: round_ % len(tools)]
                    for tool in order:
                        fresh_bucket(client, BUCKET)
                        shutil.rmtree(state, ignore_errors=True)
                        cmd = command(tool, paths, tree.pdata_root, endpoint, config)
                        wrap = shlex.split(args.wrap) if tool in PDATA_SYNC else []
                        wait_until_idle(s3, prefect)
                        first = run_measured(wrap + cmd, env)
                        wait_until_idle(s3, prefect)
                        again = run_measured(cmd, env)
                        for m in (first, again):
                            if m.returncode != 0:
                                print(m.stderr[-2000:], file=sys.stderr)
                                sys.exit(f"{tool} failed on {case}")
                        if not wrap:  # a wrapper (a profiler) may write to stdout too
                            check(tool, first, again, tree.files)
                        r = results[case][tool]
                        r["initial"].append(first.seconds)
                        r["nochange"].append(again.seconds)
                        r["rss"].append(max(first.peak_rss_mb, again.peak_rss_mb))
                        r["cpu"].append(first.cpu_seconds)
                        print(
                            f"  {case:5} round {round_ + 1} {tool:10} "
                            f"initial {first.seconds:6.2f} s (CPU {first.cpu_seconds:6.2f} s)  "
                            f"no-change {again.seconds:5.2f} s",
                            file=sys.stderr,
                        )
            report(case, tree, results[case], args.link)
            if args.chart:
                chart(case, tree, results[case], args, Path(f"{args.chart}-{case}.png"))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"date": datetime.now(UTC).isoformat(), "machine": machine(), "results": results},
                indent=1,
            )
        )
    return 0


def check(tool: str, first: Measured, again: Measured, files: int) -> None:
    """pdata-sync must really have uploaded everything, then nothing."""
    if tool not in PDATA_SYNC:
        return
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    if a["uploaded"] != files or b["unchanged"] != files or b["uploaded"] != 0:
        sys.exit(f"pdata-sync: unexpected summaries {a['uploaded']} / {b['unchanged']}")


def chart(case: str, tree, results: dict[str, dict[str, list[float]]], args, path: Path) -> None:
    """Initial runs side by side (medians): wall time and files/s, next to report()'s table."""
    rows = [
        (tool, statistics.median(r["initial"]), tree.files / statistics.median(r["initial"]))
        for tool, r in results.items()
    ]
    via = f"link {args.link} (RTT ms : Mbit/s up)" if args.link else "loopback"
    title = (
        f"{case}: {tree.files} files, {tree.bytes / MB:.0f} MB, initial upload, median of "
        f"{args.runs}; {via}; {machine()}"
    )
    draw_chart(rows, path, title)
    print(f"chart: {path}")


def report(case: str, tree, results: dict[str, dict[str, list[float]]], link: str | None) -> None:
    mb = tree.bytes / MB
    via = f", link {link} (RTT ms : Mbit/s up)" if link else ", loopback"
    print(f"\n{case}: {tree.files} files, {mb:.0f} MB  ({machine()}{via})")
    print(
        f"{'tool':20} {'initial (median, min-max)':28} {'files/s':>8} {'MB/s':>7}  "
        f"{'CPU/1k img':>10}  {'no-change':24} {'peak RSS':>9}"
    )
    for tool, r in results.items():
        med = statistics.median(r["initial"])
        # the client's own user + system CPU of the initial upload, per 1,000 images: what
        # competes with Sidexis on a clinic's server (servers' CPU not included)
        cpu = statistics.median(r["cpu"]) / tree.files * 1000
        print(
            f"{tool:20} {fmt(r['initial']):28} {tree.files / med:8.0f} {mb / med:7.1f}  "
            f"{cpu:8.2f} s  {fmt(r['nochange']):24} {max(r['rss']):6.0f} MB"
        )
    if "prefect-floor" in results:
        floor = statistics.median(
            results["prefect-floor"]["initial"] + results["prefect-floor"]["nochange"]
        )
        print(
            f"Prefect floor (a flow with one parameter and one task, whole process): {floor:.2f} s"
        )
        for tool in (t for t in PDATA_SYNC if t in results):
            nochange = statistics.median(results[tool]["nochange"])
            print(f"{tool} no-change spends {nochange - floor:.2f} s above it")
    for tool in (t for t in PDATA_SYNC if t in results and "s5cmd" in results):
        p, s = results[tool], results["s5cmd"]
        print(
            f"{tool} / s5cmd: initial "
            f"{statistics.median(p['initial']) / statistics.median(s['initial']):.2f}x, "
            f"no-change {statistics.median(p['nochange']) / statistics.median(s['nochange']):.2f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
