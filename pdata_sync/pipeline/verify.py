"""Audit: re-check S3 against the catalog; S3 is never changed.

Every verified row must have its object, with the size and ETag (S3's own checksum of the
content) recorded when it was verified. Objects under the listed patient prefixes that
belong to the clinic (by their key) but have no catalog row, or only a retired one, are
*unknown*. Rows not yet verified (an interrupted or failing upload) are reported as
*unverified*, not as drift: the next sync finishes them. Retired rows are counted, nothing
else: their objects live outside ``images/``.

What the listing showed is recorded in the catalog: a row whose object is missing or
changed becomes *drifted* (CONTRADICT: the next sync uploads it again, however recently it
was confirmed), a row whose object matches is confirmed again (RECONFIRM: ``checked_at``
renewed; a drifted row whose object is back with the verified size and ETag is *verified*
again). Only the rows of the configured destination (endpoint + bucket) are compared.

When the clinic has an Orthanc, every image recorded as held there is looked up by its
instance id (:func:`verify_orthanc`); one Orthanc no longer has is reported and marked
*missing*, so the next sync stores it again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pdata_sync.archive.listing import RemoteObject, list_patients
from pdata_sync.archive.objects import stored_encryption
from pdata_sync.catalog import DRIFTED, RETIRED, VERIFIED, ClinicImages, OrthancRecords
from pdata_sync.orthanc.client import OrthancClient

LIST_WORKERS = 16


@dataclass
class Drift:
    """What ``verify`` found; ``ok`` when S3 holds exactly what the catalog says."""

    clinic_id: str
    rows: int = 0
    verified_ok: int = 0
    prefixes_listed: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[dict[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    retired: int = 0  # rows of objects moved out of images/: nothing to compare
    orthanc_checked: int | None = None  # None: the clinic has no Orthanc
    orthanc_missing: list[str] = field(default_factory=list)
    # s3.server_side_encryption set: the objects S3 does not say are stored that way
    unencrypted: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.changed or self.unknown or self.orthanc_missing or self.unencrypted
        )

    @property
    def differences(self) -> int:
        return (
            len(self.missing)
            + len(self.changed)
            + len(self.unknown)
            + len(self.orthanc_missing)
            + len(self.unencrypted)
        )

    def table(self) -> list[dict[str, str]]:
        """One row per object that differs from the catalog (key, finding, reason)."""
        rows = [{"key": k, "finding": "missing in S3", "reason": ""} for k in sorted(self.missing)]
        rows += [
            {"key": c["key"], "finding": "changed in S3", "reason": c["reason"]}
            for c in sorted(self.changed, key=lambda c: c["key"])
        ]
        rows += [
            {"key": k, "finding": "unknown object", "reason": "no catalog row"}
            for k in sorted(self.unknown)
        ]
        rows += [
            {"key": k, "finding": "missing in Orthanc", "reason": "stored there, now gone"}
            for k in sorted(self.orthanc_missing)
        ]
        rows += [
            {"key": u["key"], "finding": "not encrypted at rest", "reason": u["reason"]}
            for u in sorted(self.unencrypted, key=lambda u: u["key"])
        ]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "clinic_id": self.clinic_id,
            "ok": self.ok,
            "rows": self.rows,
            "verified_ok": self.verified_ok,
            "prefixes_listed": self.prefixes_listed,
            "missing": sorted(self.missing),
            "changed": sorted(self.changed, key=lambda c: c["key"]),
            "unknown": sorted(self.unknown),
            "unverified": sorted(self.unverified),
            "retired": self.retired,
            "unencrypted": sorted(self.unencrypted, key=lambda u: u["key"]),
            "orthanc": None
            if self.orthanc_checked is None
            else {"checked": self.orthanc_checked, "missing": sorted(self.orthanc_missing)},
        }


def verify_catalog(
    images: ClinicImages,
    client: Any,
    bucket: str,
    belongs: Callable[[str], bool],
    flow_run_id: str | None = None,
    encryption: str | None = None,
) -> Drift:
    """Compare every catalog row of the clinic in this destination with what S3 lists,
    and record the result in the catalog (S3 is only read). With ``encryption`` (the
    configured ``s3.server_side_encryption``) every object that matches is also asked
    (HEAD) how S3 stores it: one stored otherwise is reported and recorded as drifted,
    for the next sync to write again, encrypted."""
    rows = images.rows()
    drift = Drift(clinic_id=images.clinic_id, rows=len(rows))
    guids = sorted({r.patient_guid for r in rows})
    listings: dict[str, dict[str, RemoteObject]] = {}
    for guid, listing in list_patients(client, bucket, guids, LIST_WORKERS).items():
        if isinstance(listing, Exception):
            raise listing  # an audit with a prefix it could not read is no audit
        listings[guid] = listing
    drift.prefixes_listed = len(listings)
    known: dict[str, set[str]] = defaultdict(set)
    confirmed: list[str] = []
    for row in rows:
        if row.state == RETIRED:
            # moved out of images/: an object under its key again is not vouched for
            # (reported unknown, below), and nothing of it is "not yet verified"
            drift.retired += 1
            continue
        known[row.patient_guid].add(row.key)
        obj: RemoteObject | None = listings[row.patient_guid].get(row.key)
        if row.state not in (VERIFIED, DRIFTED):
            drift.unverified.append(row.key)
        elif obj is None:
            drift.missing.append(row.key)
        elif obj.size != row.size:
            drift.changed.append(
                {"key": row.key, "reason": f"size {obj.size} in S3, {row.size} verified"}
            )
        elif obj.etag != row.etag:
            drift.changed.append(
                {"key": row.key, "reason": f"ETag {obj.etag} in S3, {row.etag} verified"}
            )
        else:
            drift.verified_ok += 1
            confirmed.append(row.key)
    for guid, listing in listings.items():
        drift.unknown += [k for k in listing if k not in known[guid] and belongs(k)]
    if encryption is not None:
        drift.unencrypted = not_encrypted(client, bucket, confirmed, encryption)
        plain = {u["key"] for u in drift.unencrypted}
        confirmed = [k for k in confirmed if k not in plain]
        drift.verified_ok -= len(plain)
    images.reconfirm(confirmed, flow_run_id)
    images.contradict(
        drift.missing + [c["key"] for c in drift.changed + drift.unencrypted], flow_run_id
    )
    return drift


def not_encrypted(
    client: Any, bucket: str, keys: list[str], algorithm: str
) -> list[dict[str, str]]:
    """The objects among ``keys`` whose HEAD does not say ``algorithm`` (key, reason)."""

    with ThreadPoolExecutor(LIST_WORKERS) as pool:
        found = list(pool.map(lambda key: stored_encryption(client, bucket, key), keys))
    return [
        {"key": key, "reason": f"S3 stores it {'as ' + how if how else 'unencrypted'}, "
         f"not {algorithm}"}
        for key, how in zip(keys, found, strict=True)
        if how != algorithm
    ]  # fmt: skip


def verify_orthanc(
    records: OrthancRecords, client: OrthancClient, drift: Drift, concurrency: int
) -> Drift:
    """Ask Orthanc for every instance the catalog records it holds (``GET /instances/{id}``);
    the ones it no longer has are reported and marked *missing* (Orthanc is only read)."""
    held = records.held()
    with ThreadPoolExecutor(max(1, min(concurrency, len(held) or 1))) as pool:
        found = list(pool.map(lambda row: client.exists(row.instance_id), held))
    present = [row.key for row, ok in zip(held, found, strict=True) if ok]
    missing = [row.key for row, ok in zip(held, found, strict=True) if not ok]
    records.checked(present, missing)
    drift.orthanc_checked = len(held)
    drift.orthanc_missing = missing
    return drift
