"""Listings of the archive: every object under a prefix, and many patients' prefixes
at once (one walk of ``images/`` when they are many, else one listing each).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pdata_sync.archive import s3_put
from pdata_sync.identity.keys import is_canonical_guid, patient_prefix


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: datetime


def _remote(obj: Mapping[str, Any]) -> RemoteObject:
    return RemoteObject(
        key=obj["Key"],
        size=int(obj["Size"]),
        etag=str(obj.get("ETag", "")).strip('"'),
        last_modified=obj["LastModified"],
    )


def iter_prefix(client: Any, bucket: str, prefix: str) -> Iterator[RemoteObject]:
    """Every object under ``prefix``, all pages."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield _remote(obj)


def list_prefix(client: Any, bucket: str, prefix: str) -> dict[str, RemoteObject]:
    """``key -> RemoteObject`` for every object under ``prefix``."""
    return {o.key: o for o in iter_prefix(client, bucket, prefix)}


# A batch's patients are listed as one range of images/ when they are many: a LIST page
# holds up to 1,000 keys, where listing each patient's prefix costs one request per patient
# (10,000 requests for a new worker or a full run at 10,000 patients). That pays only while
# the range holds few other objects: in a bucket shared with other clinics their patients'
# random GUIDs interleave with ours. So the walk stops after one page per
# RANGE_PATIENTS_PER_PAGE patients, and the patients it did not reach are listed one by one
# (at worst 1/RANGE_PATIENTS_PER_PAGE more requests than listing each patient).
RANGE_MIN_PATIENTS = 8

RANGE_PATIENTS_PER_PAGE = 4

LIST_PAGE_KEYS = 1000

_IMAGES = "images/"


def _list_range(client: Any, bucket: str, guids: list[str]) -> dict[str, dict[str, RemoteObject]]:
    """The objects of ``guids`` from one walk of ``images/`` from the smallest GUID to the
    largest; the GUIDs the walk did not finish (it gives up after a key budget) are left
    out, and so is the smallest, which the caller lists on its own (below).

    The walk goes through obstore (Rust; ADR 0011): botocore parsed each 1,000-key page
    twice in Python (its check for an error inside a 200 answer, then the answer), about
    0.1 ms of CPU per key with the GIL held. It starts after ``images/{smallest}``: obstore
    drops a trailing slash from the offset, and without it SeaweedFS skips that "folder"
    while AWS includes it, so the smallest GUID's objects are left to a prefix listing
    that both servers answer alike."""
    import obstore

    wanted = sorted(set(guids))
    found: dict[str, dict[str, RemoteObject]] = {g: {} for g in wanted[1:]}
    budget = max(1, len(wanted) // RANGE_PATIENTS_PER_PAGE) * LIST_PAGE_KEYS
    stream = obstore.list(
        s3_put.store_of(client, bucket),
        _IMAGES,
        offset=f"{_IMAGES}{wanted[0]}",
        chunk_size=LIST_PAGE_KEYS,
    )
    reached = wanted[0]  # every GUID before this one is complete
    for chunk in stream:
        for meta in chunk:
            key = meta["path"]
            guid, slash, _ = key[len(_IMAGES) :].partition("/")
            if guid > wanted[-1]:
                return found
            reached = guid
            if slash and guid in found:
                found[guid][key] = RemoteObject(
                    key=key,
                    size=int(meta["size"]),
                    etag=str(meta.get("e_tag") or "").strip('"'),
                    last_modified=meta["last_modified"],
                )
        budget -= len(chunk)
        if budget <= 0:
            break
    else:
        return found  # the end of images/
    return {guid: objects for guid, objects in found.items() if guid < reached}


def list_patients(
    client: Any, bucket: str, patient_guids: list[str], workers: int
) -> dict[str, dict[str, RemoteObject] | Exception]:
    """Each patient's objects under ``images/{guid}/`` (``key -> RemoteObject``), by
    patientGuid. Many patients are walked as one range of ``images/`` (above); the others
    are listed one prefix each, ``workers`` at a time (each listing is a round trip: one
    after the other, a WAN's latency times the patients). A patient whose listing failed
    maps to its exception."""

    def listing(guid: str) -> dict[str, RemoteObject] | Exception:
        try:
            return list_prefix(client, bucket, patient_prefix(guid))
        except Exception as exc:  # noqa: BLE001 - the caller decides per patient
            return exc

    if not patient_guids:
        return {}
    listed: dict[str, dict[str, RemoteObject] | Exception] = {}
    rest = list(dict.fromkeys(patient_guids))
    canonical = [g for g in rest if is_canonical_guid(g)]
    if len(canonical) >= RANGE_MIN_PATIENTS:
        try:
            ranged = _list_range(client, bucket, canonical)
        except Exception:  # noqa: BLE001 - each patient's own listing says what is wrong
            ranged = {}
        listed.update(ranged)
        rest = [g for g in rest if g not in ranged]
    if rest:
        with ThreadPoolExecutor(min(workers, len(rest)), thread_name_prefix="s3-list") as pool:
            listed.update(zip(rest, pool.map(listing, rest), strict=True))
    return {guid: listed[guid] for guid in patient_guids}
