"""Data path candidates side by side (issue: performance, item 2): the same small files to
the same SeaweedFS, each with the SHA-256 checksum S3 verifies, 16 at a time.

    make bench-datapath   # or: .venv/bin/python bench/datapath.py [--files 2000] [--kb 315]
                          #        [--rounds 3] [--chart bench/datapath.png]

Candidates (bench/_put_client.py): ``pdata-sync`` (the product's put_small: obstore from
16 threads since ADR 0011), ``botocore`` (the path before it), ``signed-httpx``
(botocore's signer, httpx's pooled connections), ``obstore`` and ``crt`` (awscrt), against
``s5cmd`` in the same run. Each is a whole child process: wall time, CPU and peak RSS are
its own. After each, a sample of what it stored is checked: the object count, the stored
SHA-256 checksum and the Content-Type. Prints medians of the rounds and the ratio to s5cmd;
writes a bar chart (PNG) of the wall times and files/s.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

from _common import ROOT, draw_chart, machine, run_measured

from pdata_sync.demo.seaweed import SeaweedS3

BUCKET = "datapath"
BENCH_VENV = ROOT / ".bench-venv" / "bin"
CLIENT = str(ROOT / "bench" / "_put_client.py")
CANDIDATES = {
    "pdata-sync": sys.executable,
    "botocore": sys.executable,
    "signed-httpx": sys.executable,
    "obstore": str(BENCH_VENV / "python"),
    "crt": str(BENCH_VENV / "python"),
}


def make_files(folder: Path, count: int, size: int) -> dict[str, bytes]:
    """``count`` files of ``size`` random bytes; name -> SHA-256."""
    rng = random.Random(5)
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for i in range(count):
        data = rng.randbytes(size)
        name = f"{i:06d}.dcm"
        (folder / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).digest()
    return digests


def check_stored(client, prefix: str, digests: dict[str, bytes], with_checksum: bool) -> str:
    """What the candidate left in S3: every object there, a sample with the checksum."""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    if len(keys) != len(digests):
        return f"{len(keys)} of {len(digests)} objects"
    for name in random.Random(1).sample(sorted(digests), 5):
        head = client.head_object(Bucket=BUCKET, Key=prefix + name, ChecksumMode="ENABLED")
        if with_checksum and head.get("ChecksumSHA256") != base64.b64encode(digests[name]).decode():
            return f"{name}: no SHA-256 checksum stored"
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=315)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "datapath.png")
    parser.add_argument("--only", nargs="*", default=None, help="candidates to run")
    args = parser.parse_args()
    s5cmd = BENCH_VENV / "s5cmd"
    if not s5cmd.exists():
        print("run `make bench-setup` first (s5cmd, obstore, awscrt)", file=sys.stderr)
        return 2
    tools = [t for t in [*CANDIDATES, "s5cmd"] if args.only is None or t in args.only]
    work = Path(tempfile.mkdtemp(prefix="pdata-datapath-"))
    digests = make_files(work / "files", args.files, args.kb * 1024)
    print(
        f"datapath on {machine()}: {args.files} x {args.kb} KB, {args.rounds} rounds",
        file=sys.stderr,
    )
    results: dict[str, list] = {t: [] for t in tools}
    with SeaweedS3(work / "s3", buckets=(BUCKET,)) as s3:
        env = {**os.environ, **s3.env()}
        client = s3.client()
        for n in range(args.rounds):
            order = tools[n % len(tools) :] + tools[: n % len(tools)]
            for tool in order:
                prefix = f"r{n}/{tool}/"
                if tool == "s5cmd":
                    cmd = [
                        str(s5cmd),
                        "--endpoint-url",
                        s3.endpoint,
                        "--numworkers",
                        "16",
                        "cp",
                        "--content-type",
                        "application/dicom",
                        f"{work / 'files'}/*",
                        f"s3://{BUCKET}/{prefix}",
                    ]
                else:
                    cmd = [
                        CANDIDATES[tool],
                        CLIENT,
                        tool,
                        "--endpoint",
                        s3.endpoint,
                        "--bucket",
                        BUCKET,
                        "--prefix",
                        prefix,
                        "--dir",
                        str(work / "files"),
                    ]
                measured = run_measured(cmd, env)
                verdict = (
                    check_stored(client, prefix, digests, with_checksum=tool != "s5cmd")
                    if measured.returncode == 0
                    else f"exit {measured.returncode}: {measured.stderr.strip()[-300:]}"
                )
                results[tool].append((measured, verdict))
                print(
                    f"  round {n + 1} {tool:<13} {measured.seconds:6.1f} s  "
                    f"cpu {measured.cpu_seconds:5.1f} s  rss {measured.peak_rss_mb:5.0f} MB  "
                    f"{verdict}",
                    file=sys.stderr,
                )
    reference = (
        statistics.median(m.seconds for m, _ in results["s5cmd"]) if "s5cmd" in results else None
    )
    print(f"\n{args.files} x {args.kb} KB to SeaweedFS on loopback, median of {args.rounds}:")
    print(
        f"{'tool':<13} {'wall s':>7} {'files/s':>8} {'CPU s':>6} {'RSS MB':>7} "
        f"{'x s5cmd':>8}  stored"
    )
    rows = []
    for tool in tools:
        runs = results[tool]
        wall = statistics.median(m.seconds for m, _ in runs)
        cpu = statistics.median(m.cpu_seconds for m, _ in runs)
        rss = max(m.peak_rss_mb for m, _ in runs)
        verdicts = sorted({v for _, v in runs})
        ratio = f"{wall / reference:.2f}" if reference else "-"
        print(
            f"{tool:<13} {wall:7.1f} {args.files / wall:8.0f} {cpu:6.1f} {rss:7.0f} "
            f"{ratio:>8}  {', '.join(verdicts)}"
        )
        rows.append((tool, wall, args.files / wall))
    draw_chart(
        rows,
        args.chart,
        f"{args.files} x {args.kb} KB to SeaweedFS, loopback, "
        f"median of {args.rounds} ({machine()})",
    )
    print(f"chart: {args.chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
