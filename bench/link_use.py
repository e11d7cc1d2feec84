"""A clinic's first sync on a shaped uplink: does each tool keep the link busy, and does a
cap hold? pdata-sync (thumbnails on, as clinics run it), its data path, s5cmd and rclone,
then pdata-sync with ``max_upload_mbit`` and rclone with ``--bwlimit`` at the same cap.

    make bench            # runs this after compare_tools.py
    .venv/bin/python bench/link_use.py [--link 20:40] [--cap 20] [--runs 1]

Every tool sends to the same SeaweedFS through the same shaped link on 127.0.0.1
(tests/kit/link.py: a round trip of 20 ms, 40 Mbit/s up shared by every connection, as a
clinic's VDSL uplink), which records when each chunk went up. For each run: the wall time
of the whole command, the link's use from the first body to the last (the bytes it carried
over what it could have carried), and for a capped run the mean rate and the lowest and
highest over any 10 s, against the cap. The tree is a dental mix: intraorals of 0.4 to
1.5 MB, panoramics of 3 to 10 MB and a CBCT export of 120 MB (real DICOM files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from _common import (
    MB,
    ROOT,
    draw_chart,
    fresh_bucket,
    machine,
    make_tree,
    run_measured,
    servers,
    wait_until_idle,
)
from compare_tools import CLI, tool_env, tool_paths

from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config
from tests.kit.link import ShapedLink, busy, windows

BUCKET = "dental-images"
# 80 intraorals, 8 panoramics, one CBCT export: 89 files, 218 MB (208 MiB), 44 s at 40 Mbit/s
DENTAL_MIX = (
    (40, 400_000),
    (25, 800_000),
    (15, 1_500_000),
    (4, 3_000_000),
    (3, 6_000_000),
    (1, 10_000_000),
    (1, 120_000_000),
)
TOOLS = (
    "pdata-sync",
    "pdata-sync-data",
    "s5cmd",
    "rclone",
    "pdata-sync capped",
    "rclone --bwlimit",
)


def command(tool: str, paths: dict[str, str], src: str, configs: dict[str, Path], cap: float):
    target = f"{BUCKET}/{tool.split()[0]}/"
    if tool.startswith("pdata-sync"):
        return [CLI, "sync", "--config", str(configs[tool]), "--json"]
    if tool == "s5cmd":
        return [paths["s5cmd"], "--endpoint-url", "{endpoint}", "sync", f"{src}/", f"s3://{target}"]
    rclone = [paths["rclone"], "sync", src, f"bench:{target}"]
    if tool == "rclone --bwlimit":  # rclone counts bytes: the same cap in bytes per second
        rclone += ["--bwlimit", f"{int(cap * 1e6 / 8)}B"]
    return rclone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--link", default="20:40", help="RTT_MS:UP_MBIT")
    parser.add_argument("--cap", type=float, default=20.0, help="Mbit/s for the capped runs")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workdir", default=".bench/link")
    parser.add_argument("--chart", default=str(ROOT / "bench" / "link-use.png"))
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rtt, link_mbit = (float(x) for x in args.link.split(":"))
    tools = [t for t in TOOLS if t in args.tools.split(",")]
    paths = tool_paths()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tree = make_tree(work / "tree-dental", patients=0, files_per_patient=5, file_bytes=0,
                     mix=DENTAL_MIX)  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
    with servers(work / "servers") as (s3, prefect):
        host, port = s3.endpoint.removeprefix("http://").rsplit(":", 1)  # type: ignore[attr-defined]
        mapping = json.loads(Path(tree.mapping_path).read_text())
        with (
            ShapedLink(host, int(port), rtt_ms=rtt, up_mbit=link_mbit) as link,
            ResolverServer(mapping) as resolver,
        ):
            client = s3.client()  # type: ignore[attr-defined]
            env = tool_env({**os.environ, **prefect.env()}, s3, link.url)  # type: ignore[attr-defined]
            state = work / "state"
            base = write_config(
                work / "clinic.yaml",
                tree,
                resolver_batch_size=500,
                resolver_url=resolver.url,
                endpoint=link.url,
                state_dir=state,
            )
            configs = {"pdata-sync": base}
            for tool, extra in (
                ("pdata-sync-data", "thumbnails: false\n"),
                ("pdata-sync capped", ""),
            ):
                path = work / f"{tool.replace(' ', '-')}.yaml"
                text = base.read_text() + extra
                if tool == "pdata-sync capped":
                    text = text.replace(
                        "transfer:\n", f"transfer:\n  max_upload_mbit: {args.cap}\n"
                    )
                path.write_text(text)
                configs[tool] = path
            for round_ in range(args.runs):
                for tool in tools[round_ % len(tools) :] + tools[: round_ % len(tools)]:
                    fresh_bucket(client, BUCKET)
                    shutil.rmtree(state, ignore_errors=True)
                    cmd = [
                        part.replace("{endpoint}", link.url)
                        for part in command(tool, paths, tree.pdata_root, configs, args.cap)
                    ]
                    wait_until_idle(s3, prefect)
                    mark = len(link.sent)
                    measured = run_measured(cmd, env)
                    if measured.returncode != 0:
                        print(measured.stderr[-2000:], file=sys.stderr)
                        sys.exit(f"{tool} failed")
                    sent = link.sent[mark:]
                    used, span = busy(sent, link_mbit)
                    rates = windows(sent, 10.0) or [0.0]
                    row = {
                        "seconds": measured.seconds,
                        "cpu": measured.cpu_seconds,
                        "busy": used,
                        "span": span,
                        "mean_mbit": used * link_mbit,
                        "min10": min(rates),
                        "max10": max(rates),
                    }
                    results[tool].append(row)
                    print(
                        f"  round {round_ + 1} {tool:18} {measured.seconds:6.1f} s  link "
                        f"{used:4.0%} busy  {row['mean_mbit']:5.1f} Mbit/s "
                        f"(10 s: {row['min10']:.1f}-{row['max10']:.1f})",
                        file=sys.stderr,
                    )
    report(tree, results, args, link_mbit)
    if args.chart:
        rows = [
            (t, statistics.median(r["seconds"] for r in rs), 100 * statistics.median(
                r["busy"] for r in rs))
            for t, rs in results.items()
        ]  # fmt: skip
        title = (
            f"{tree.files} files, {tree.bytes / MB:.0f} MB through a link of {args.link} "
            f"(RTT ms : Mbit/s up), cap {args.cap:g} Mbit/s; {machine()}"
        )
        draw_chart(
            rows,
            Path(args.chart),
            title,
            (("wall time (s, lower is better)", "s"), ("link busy (%, higher is better)", "%")),
        )
        print(f"chart: {args.chart}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


def report(tree, results: dict[str, list[dict[str, float]]], args, link_mbit: float) -> None:
    print(
        f"\n{tree.files} files, {tree.bytes / MB:.0f} MB; link {args.link} (RTT ms : Mbit/s "
        f"up), cap {args.cap:g} Mbit/s; {machine()}; medians of {args.runs}"
    )
    print(f"{'tool':18} {'wall':>8} {'link busy':>10} {'Mbit/s':>7}  {'any 10 s':>12}  {'cap':>16}")
    for tool, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        capped = "capped" in tool or "bwlimit" in tool
        accuracy = ""
        if capped:
            worst = max(abs(med["min10"] - args.cap), abs(med["max10"] - args.cap)) / args.cap
            accuracy = f"within {worst:.0%} of it"
        print(
            f"{tool:18} {med['seconds']:7.1f}s {med['busy']:9.0%} {med['mean_mbit']:7.1f}  "
            f"{med['min10']:5.1f}-{med['max10']:5.1f}  {accuracy:>16}"
        )
    print(
        "link busy: bytes the link carried from a tool's first body to its last, over what "
        f"{link_mbit:g} Mbit/s could carry; 'any 10 s': the lowest and highest rate over a "
        "10 s window of that span"
    )


if __name__ == "__main__":
    sys.exit(main())
