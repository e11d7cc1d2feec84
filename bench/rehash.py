"""The rolling content check's cost per night at 100,000 archived files (ADR 0015).

    make bench-rehash     # or: .venv/bin/python bench/rehash.py [--files 100000] [--kb 315]

A catalog of ``--files`` verified rows (SQLite, as a worker keeps it), the files of the
night's slice on disk at a dental intraoral size (315 KB), and the product's
``recheck_content`` run as a night runs it, for ``rehash_days`` 30 (the default) and 7:
wall time with the files in the page cache and out of it (evicted with
``posix_fadvise(DONTNEED)``, which needs no root), against ``sha256sum`` and
``openssl dgst -sha256`` over the same files in the same run (the references: what hashing
those bytes costs with standard tools, one core each).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from _common import machine

from pdata_sync.catalog import Catalog
from pdata_sync.pipeline.recheck import recheck_content, slice_size

CLINIC = "clinic-bench"
DEST = "http://127.0.0.1:8333/dental-images"


def build(work: Path, files: int, kb: int, on_disk: int) -> tuple[Catalog, list[Path]]:
    """A catalog of ``files`` verified rows; the ``on_disk`` hashed longest ago have files."""
    shutil.rmtree(work, ignore_errors=True)
    root = work / "PDATA"
    root.mkdir(parents=True)
    catalog = Catalog.open(f"sqlite:///{work / 'catalog.sqlite'}")
    block = os.urandom(kb * 1024)
    paths: list[Path] = []
    rows = []
    insert = sa.text(
        "INSERT INTO images (clinic_id, key, image_id, patient_guid, rel_path, source_size, "
        "source_mtime_ns, sha256, etag, state, updated_at, destination, content_checked_at) "
        "VALUES (:c, :k, :i, :g, :p, :s, :m, :h, :e, 'verified', :t, :d, :t)"
    )
    digest = hashlib.sha256(block).hexdigest()
    with catalog.engine.begin() as conn:
        for i in range(files):
            folder, name = f"P_{i // 10:08d}", f"0000_{i:08d}.dcm"
            mtime = 1_700_000_000_000_000_000 + i
            if i < on_disk:
                path = root / folder / name
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(block)
                os.utime(path, ns=(mtime, mtime))
                paths.append(path)
            guid = str(uuid.UUID(int=i * 7919 + 1))
            # the files with content on disk are the ones hashed longest ago
            day = 0 if i < on_disk else 1 + i % 29
            rows.append(
                {
                    "c": CLINIC,
                    "k": f"images/{guid}/{CLINIC}_{i}_x.dcm",
                    "i": i,
                    "g": guid,
                    "p": f"{folder}/{name}",
                    "s": len(block),
                    "m": mtime,
                    "h": digest,
                    "e": "0" * 32,
                    "t": f"2026-11-{day + 1:02d} 00:00:00",
                    "d": DEST,
                }
            )
            if len(rows) == 5000:
                conn.execute(insert, rows)
                rows = []
        if rows:
            conn.execute(insert, rows)
    return catalog, paths


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def reset(catalog: Catalog, count: int) -> None:
    """Make the slice the oldest again (a run renewed its content_checked_at)."""
    with catalog.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE images SET content_checked_at = '2026-11-01 00:00:00' WHERE image_id < :n"
            ),
            {"n": count},
        )


def night(catalog: Catalog, root: Path, days: int) -> tuple[float, int, int]:
    images = catalog.images(CLINIC, DEST)
    t0 = time.perf_counter()
    found = recheck_content(images, root, days, max(2, os.cpu_count() or 1))
    return time.perf_counter() - t0, found.files, found.bytes


def reference(tool: list[str], paths: list[Path]) -> float:
    """Wall time of ``tool`` hashing ``paths`` (one process per 2,000 files, one core)."""
    t0 = time.perf_counter()
    for start in range(0, len(paths), 2000):
        subprocess.run(
            [*tool, *map(str, paths[start : start + 2000])], check=True, stdout=subprocess.DEVNULL
        )
    return time.perf_counter() - t0


TOOLS = {"sha256sum": ["sha256sum"], "openssl": ["openssl", "dgst", "-sha256"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--kb", type=int, default=315)
    parser.add_argument("--workdir", default=".bench/rehash")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    biggest = slice_size(args.files, 7)
    t0 = time.perf_counter()
    catalog, paths = build(work, args.files, args.kb, biggest)
    print(
        f"catalog: {args.files:,} verified rows; {len(paths):,} files of {args.kb} KB on disk "
        f"({time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
    )
    print(f"machine: {machine()}")
    print(f"{'rehash_days':>11} {'files':>7} {'GB':>6} {'cache':>6} {'pdata-sync':>11} "
          f"{'sha256sum':>10} {'ratio':>6} {'openssl':>8} {'ratio':>6}")  # fmt: skip
    try:
        for days in (30, 7):
            count = slice_size(args.files, days)
            batch = paths[:count]
            for cache in ("warm", "cold"):
                reset(catalog, len(paths))
                if cache == "cold":
                    evict(batch)
                seconds, files, size = night(catalog, work / "PDATA", days)
                assert files == count, (files, count)
                line = f"{days:>11} {files:>7,} {size / 1e9:6.2f} {cache:>6} {seconds:10.2f}s"
                for tool in TOOLS.values():
                    if cache == "cold":
                        evict(batch)
                    took = reference(tool, batch)
                    line += f" {took:9.2f}s {seconds / took:5.2f}x"
                print(line)
        print(
            "per night: each of the clinic's files is re-hashed every rehash_days nights; "
            f"the slice is ceil({args.files:,} / rehash_days) files"
        )
    finally:
        catalog.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
