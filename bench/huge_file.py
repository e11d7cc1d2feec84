"""Peak memory of ``pdata-sync sync`` uploading one 1 GB DICOM file (issue 4 item 5, issue 5
item 3). Target: peak RSS under 300 MB.

    .venv/bin/python bench/huge_file.py [--size-mb 1024] [--workdir .bench/huge]

Starts SeaweedFS, a Prefect server and the resolver on 127.0.0.1, generates a small clinic,
turns one of its images into a real DICOM file of ``--size-mb``, and runs the real CLI
against the running Prefect server (as in production). Prints wall time, MB/s and the
process's peak RSS, next to the same clinic's no-change re-run (the baseline: Python,
Prefect, boto3 loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from _common import (
    CLI,
    MB,
    machine,
    make_tree,
    run_measured,
    servers,
    write_big_dicom,
)

from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config

TARGET_MB = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--workdir", default=".bench/huge")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    tree = make_tree(work / "clinic", patients=3, files_per_patient=2, file_bytes=64 * 1024)
    big_path = Path(tree.pdata_root) / "P_1000" / "0000_1.dcm"
    write_big_dicom(big_path, big_path, args.size_mb * MB)
    size = big_path.stat().st_size
    mapping = json.loads(Path(tree.mapping_path).read_text())

    with servers(work) as (s3, prefect), ResolverServer(mapping) as resolver:
        config = write_config(
            work / "clinic.yaml",
            tree,
            resolver_batch_size=500,
            resolver_url=resolver.url,
            endpoint=s3.endpoint,
            state_dir=work / "state",
        )
        env = {**os.environ, **prefect.env(), **s3.env()}
        cmd = [CLI, "sync", "--config", str(config), "--json"]
        first = run_measured(cmd, env)
        if first.returncode != 0:
            print(first.stderr[-3000:], file=sys.stderr)
            return 1
        again = run_measured(cmd, env)
        summary = json.loads(first.stdout)
        print(
            json.dumps(
                {k: summary[k] for k in ("uploaded", "unchanged", "rejected", "failed", "skipped")}
            ),
            file=sys.stderr,
        )
        head = s3.client().head_object(
            Bucket="dental-images",
            Key=next(
                o["Key"]
                for o in s3.client().list_objects_v2(Bucket="dental-images")["Contents"]
                if "_1_" in o["Key"].rsplit("/", 1)[1]
            ),
        )
    ok = head["ContentLength"] == size and first.peak_rss_mb < TARGET_MB
    print(f"machine: {machine()}")
    print(f"file: {size / MB:.0f} MB DICOM, multipart ETag {head['ETag']}")
    print(
        f"upload (whole CLI process): {first.seconds:6.1f} s  "
        f"{size / MB / first.seconds:6.1f} MB/s  peak RSS {first.peak_rss_mb:6.1f} MB  "
        f"(uploaded {summary['uploaded']})"
    )
    print(
        f"no-change re-run (baseline): {again.seconds:5.1f} s  peak RSS {again.peak_rss_mb:6.1f} MB"
    )
    print(f"target peak RSS < {TARGET_MB} MB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
