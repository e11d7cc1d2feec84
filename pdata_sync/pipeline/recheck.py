"""The rolling content check: every run re-hashes a slice of the archived files.

A file whose bytes change while its size and mtime stay (an edit followed by ``os.utime``,
a restore that kept the times, a disk that rots) looks unchanged to every run that trusts
size and mtime, and S3 would keep the old content for ever. Each run therefore reads the
files hashed longest ago, ``ceil(verified / transfer.rehash_days)`` of them, so every file
is re-hashed at least every ``rehash_days`` days (docs/product-rules.md §3.5):

* same bytes: the row's ``content_checked_at`` is renewed;
* other bytes, same size and mtime: the file's path is returned, and the run reads it
  like a changed file (its old version kept in ``retired/``, the new one uploaded);
* size or mtime changed, or the file is gone: left to the run's own comparison (nothing
  renewed, so it comes round again).

Pure of Prefect; reads the share and the catalog, writes only ``content_checked_at``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pdata_sync.catalog import VERIFIED, CatalogRow, ClinicImages
from pdata_sync.pipeline.uploader import each_in_threads
from pdata_sync.source.changes import patient_of_path
from pdata_sync.source.dicom_meta import file_sha256

SAME, CHANGED, MOVED_ON = "same", "changed", "moved on"


@dataclass(frozen=True)
class Recheck:
    """What one run's rolling content check did."""

    files: int = 0  # files re-hashed
    bytes: int = 0
    changed: frozenset[str] = frozenset()  # paths whose bytes changed, size and mtime kept

    @property
    def patients(self) -> frozenset[int]:
        """The Sidexis patients whose folders hold a changed file (an incremental run
        reads them)."""
        return frozenset(p for p in map(patient_of_path, self.changed) if p is not None)

    def to_dict(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "changed": sorted(self.changed)}


def slice_size(verified: int, rehash_days: int) -> int:
    """How many files one run re-hashes so each is re-hashed every ``rehash_days`` runs
    (nightly runs: days); 0 when the check is off."""
    return math.ceil(verified / rehash_days) if rehash_days > 0 and verified > 0 else 0


def _verdict(root: Path, row: CatalogRow) -> tuple[str, int]:
    """(verdict, bytes read) for one archived file."""
    path = root / row.rel_path
    try:
        st = os.stat(path, follow_symlinks=False)
        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            return MOVED_ON, 0
        sha = file_sha256(path)
    except OSError:
        return MOVED_ON, 0  # gone or unreadable: the run's scan reports it
    return (SAME if sha == row.sha256 else CHANGED), st.st_size


def recheck_content(
    images: ClinicImages, root: str | Path, rehash_days: int, workers: int
) -> Recheck:
    """Re-hash this run's slice of the clinic's archived files (``workers`` threads) and
    record the ones that still hold their archived bytes."""
    counts = images.state_counts()
    rows = images.least_recently_hashed(slice_size(counts.get(VERIFIED, 0), rehash_days))
    by_path: dict[str, list[CatalogRow]] = defaultdict(list)
    for row in rows:  # a file archived under two patientGuids is read once
        by_path[row.rel_path].append(row)
    paths = sorted(by_path)
    verdicts = each_in_threads(
        lambda p: _verdict(Path(root), by_path[p][0]), paths, workers, "pdata-rehash"
    )
    found = dict(zip(paths, verdicts, strict=True))
    images.hashed([r.key for p, (v, _) in found.items() if v == SAME for r in by_path[p]])
    return Recheck(
        files=sum(1 for v, _ in verdicts if v != MOVED_ON),
        bytes=sum(n for _, n in verdicts),
        changed=frozenset(p for p, (v, _) in found.items() if v == CHANGED),
    )
