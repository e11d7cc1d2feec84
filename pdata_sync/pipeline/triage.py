"""Which planned images of a batch need work: pure decisions over the catalog rows, the
files' ``stat`` and S3's listing, testable without S3 or a database.

* *trusted*: the catalog verified this key from this very file (path, size, mtime; in a full
  run also ctime and inode) and S3 confirmed it within the trust window (docs/adr/0005): no
  S3 request, no read. A file the rolling content check found changed is never trusted.
* *unchanged*: the row is verified from this file and the listing shows the verified size
  and ETag: no read; the confirmation is renewed (RECONFIRM).
* *contradicted*: the row is verified but the listing shows the key missing or with another
  size or ETag: S3 no longer holds what was verified (CONTRADICT, then upload again). This
  holds for every verified row under a listed prefix, planned in this batch or not (a row
  whose file is gone from PDATA must not keep vouching for an object S3 no longer holds).
* everything else is read, compared and uploaded if needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pdata_sync.archive.listing import RemoteObject
from pdata_sync.catalog import VERIFIED, CatalogRow, in_the_future
from pdata_sync.pipeline.plan import PlannedImage

Listing = Mapping[str, RemoteObject]


@dataclass(frozen=True)
class FileCheck:
    """What makes a file on the share "the file the catalog verified" in this run: its
    path, size and mtime; in a full run (``strict``) also the ctime and inode recorded with
    it, where they were (an edit that put back the old mtime with ``os.utime`` cannot put
    back the ctime); and never a file the rolling content check found changed
    (``reread``: paths read whatever the catalog says)."""

    strict: bool = False
    reread: frozenset[str] = frozenset()


LENIENT = FileCheck()


def verified_from_this_file(
    item: PlannedImage, row: CatalogRow | None, st: os.stat_result, check: FileCheck = LENIENT
) -> bool:
    """The catalog verified this key from this very file (:class:`FileCheck`)."""
    return (
        row is not None
        and row.state == VERIFIED
        and row.rel_path == item.rel_path
        and row.size == st.st_size
        and row.mtime_ns == st.st_mtime_ns
        and item.rel_path not in check.reread
        and (not check.strict or row.ctime_ns is None or same_file_identity(row, st))
    )


def same_file_identity(row: CatalogRow, st: os.stat_result) -> bool:
    """The file has the ctime and inode recorded when its row was settled."""
    return row.ctime_ns == st.st_ctime_ns and row.inode == str(st.st_ino)


def trusted_unchanged(
    item: PlannedImage,
    row: CatalogRow | None,
    st: os.stat_result,
    since: datetime | None,
    check: FileCheck = LENIENT,
) -> bool:
    """The catalog verified this key from this file, and S3 confirmed it at or after
    ``since``: neither S3 nor the file needs to be asked. A confirmation dated in the
    future (a clock that ran ahead, a restored VM) is no confirmation: it would otherwise be
    trusted until that date, however long."""
    return (
        since is not None
        and st.st_size > 0
        and verified_from_this_file(item, row, st, check)
        and row is not None
        and row.confirmed_at is not None
        and row.confirmed_at >= since
        and not in_the_future(row.confirmed_at)
    )


def verified_unchanged(
    item: PlannedImage,
    row: CatalogRow | None,
    remote: RemoteObject | None,
    st: os.stat_result,
    check: FileCheck = LENIENT,
) -> bool:
    """The catalog verified this key from this file, and S3 lists it with the size and
    ETag that were verified: no need to read the file."""
    return (
        verified_from_this_file(item, row, st, check)
        and row is not None
        and remote is not None
        and remote.size == st.st_size
        and row.etag == remote.etag
    )


def contradicted(row: CatalogRow | None, remote: RemoteObject | None) -> bool:
    """A verified row whose key the listing shows missing, or with another size or ETag."""
    return (
        row is not None
        and row.state == VERIFIED
        and (remote is None or remote.size != row.size or remote.etag != row.etag)
    )


@dataclass
class Triage:
    trusted: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)
    contradicted: set[str] = field(default_factory=set)
    unlisted: dict[str, Exception] = field(default_factory=dict)  # key -> listing error
    work: list[PlannedImage] = field(default_factory=list)  # read, compare, upload

    @property
    def done(self) -> set[str]:
        return self.trusted | self.unchanged


def trusted_keys(
    items: list[PlannedImage],
    rows: Mapping[str, CatalogRow],
    stats: Mapping[str, os.stat_result],
    since: datetime | None,
    check: FileCheck = LENIENT,
) -> set[str]:
    """Keys the catalog alone vouches for (no listing needed)."""
    return {
        i.key
        for i in items
        if i.key in stats and trusted_unchanged(i, rows.get(i.key), stats[i.key], since, check)
    }


def triage(
    items: list[PlannedImage],
    rows: Mapping[str, CatalogRow],
    stats: Mapping[str, os.stat_result],
    trusted: set[str],
    listings: Mapping[str, Listing | Exception],
    others: Mapping[str, CatalogRow] | None = None,
    check: FileCheck = LENIENT,
) -> Triage:
    """Sort a batch, given the keys already ``trusted`` and the listing of every other
    patient (by patientGuid; an exception where the listing failed). ``others`` are
    verified rows under the listed patients that this batch does not plan: they are
    only checked against the listing. ``check``: what makes a file the verified one."""
    out = Triage(trusted=set(trusted))
    planned = {i.key for i in items}
    for key, row in (others or {}).items():
        listing = listings.get(row.patient_guid)
        if key in planned or listing is None or isinstance(listing, Exception):
            continue
        if contradicted(row, listing.get(key)):
            out.contradicted.add(key)
    for item in items:
        if item.key in trusted:
            continue
        listing = listings.get(item.patient_guid)
        if listing is None or isinstance(listing, Exception):
            out.unlisted[item.key] = listing or LookupError("not listed")
            continue
        row, remote, st = rows.get(item.key), listing.get(item.key), stats.get(item.key)
        if st is not None and st.st_size and verified_unchanged(item, row, remote, st, check):
            out.unchanged.add(item.key)
            continue
        if contradicted(row, remote):
            out.contradicted.add(item.key)
        out.work.append(item)
    return out
