"""The pure triage of a batch (pdata_sync/pipeline/triage.py): which planned images the catalog
vouches for, which the listing confirms or contradicts, and which need reading, without S3
or a database."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from pdata_sync.archive.listing import RemoteObject
from pdata_sync.catalog import DRIFTED, PENDING, VERIFIED, CatalogRow
from pdata_sync.pipeline.plan import PlannedImage
from pdata_sync.pipeline.triage import triage, trusted_keys

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
GUID = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"


def item(n: int, guid: str = GUID) -> PlannedImage:
    return PlannedImage(f"P_1/0000_{n}.dcm", guid, n, None, f"images/{guid}/c_{n}_x.dcm")


def stat(size: int = 100, mtime_ns: int = 1_000) -> os.stat_result:
    # mode, ino, dev, nlink, uid, gid, size, 3 int times, 3 float times, 3 ns times
    return os.stat_result((0o100644, 0, 0, 1, 0, 0, size, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime_ns, 0))


def row(it: PlannedImage, state=VERIFIED, size=100, mtime_ns=1_000, etag="e1", confirmed=NOW):
    return CatalogRow(
        it.key, it.rel_path, it.patient_guid, size, mtime_ns, "sha", etag, state, confirmed
    )


def remote(it: PlannedImage, size=100, etag="e1") -> RemoteObject:
    return RemoteObject(it.key, size, etag, NOW)


def test_a_recent_confirmation_of_this_very_file_is_trusted_without_listing():
    a, b, c = item(1), item(2), item(3)
    rows = {
        a.key: row(a),
        b.key: row(b, confirmed=NOW - timedelta(days=9)),  # outside the window
        c.key: row(c, mtime_ns=999),  # the file changed since
    }
    stats = {a.key: stat(), b.key: stat(), c.key: stat()}
    assert trusted_keys([a, b, c], rows, stats, NOW - timedelta(days=7)) == {a.key}
    assert trusted_keys([a], rows, stats, None) == set()  # recheck_days 0: trust nothing


def test_a_confirmation_dated_in_the_future_is_no_confirmation():
    """A clock that ran ahead (a restored VM) dated the confirmation next month: trusted as
    it is, S3 would not be asked about the object until then, whatever happened to it."""
    from datetime import UTC, datetime

    a = item(1)
    ahead = datetime.now(UTC) + timedelta(days=30)
    stats = {a.key: stat()}
    since = datetime.now(UTC) - timedelta(days=7)
    assert trusted_keys([a], {a.key: row(a, confirmed=ahead)}, stats, since) == set()
    recent = datetime.now(UTC) - timedelta(hours=1)
    assert trusted_keys([a], {a.key: row(a, confirmed=recent)}, stats, since) == {a.key}


def test_the_listing_confirms_contradicts_or_leaves_work():
    same, gone, other_etag, new, pending = item(1), item(2), item(3), item(4), item(5)
    items = [same, gone, other_etag, new, pending]
    rows = {
        same.key: row(same),
        gone.key: row(gone),
        other_etag.key: row(other_etag),
        pending.key: row(pending, state=PENDING),
    }
    stats = {i.key: stat() for i in items}
    listing = {
        same.key: remote(same),
        other_etag.key: remote(other_etag, etag="e2"),
        pending.key: remote(pending),
    }
    plan = triage(items, rows, stats, set(), {GUID: listing})
    assert plan.unchanged == {same.key}
    assert plan.contradicted == {gone.key, other_etag.key}
    assert [i.key for i in plan.work] == [gone.key, other_etag.key, new.key, pending.key]
    assert plan.unlisted == {}


def test_a_drifted_row_is_never_unchanged_even_when_the_listing_matches():
    a = item(1)
    plan = triage(
        [a], {a.key: row(a, state=DRIFTED)}, {a.key: stat()}, set(), {GUID: {a.key: remote(a)}}
    )
    assert plan.unchanged == set() and [i.key for i in plan.work] == [a.key]


def test_a_failed_listing_leaves_its_patients_images_unlisted():
    a, b = item(1), item(2, guid="9e1f6c2b-0000-4000-8000-000000000001")
    error = OSError("connection reset")
    plan = triage(
        [a, b], {}, {a.key: stat(), b.key: stat()}, set(), {GUID: error, b.patient_guid: {}}
    )
    assert plan.unlisted == {a.key: error}
    assert [i.key for i in plan.work] == [b.key]


def test_verified_rows_the_batch_does_not_plan_are_checked_against_the_listing():
    """A row whose file is gone from PDATA (not planned) must not keep vouching for an
    object the listing shows overwritten or missing."""
    planned, orphan_changed, orphan_gone, orphan_same = item(1), item(2), item(3), item(4)
    others = {
        orphan_changed.key: row(orphan_changed),
        orphan_gone.key: row(orphan_gone),
        orphan_same.key: row(orphan_same),
        planned.key: row(planned),  # planned keys are judged as planned items only
    }
    listing = {
        planned.key: remote(planned),
        orphan_changed.key: remote(orphan_changed, etag="tampered"),
        orphan_same.key: remote(orphan_same),
    }
    plan = triage(
        [planned],
        {planned.key: row(planned)},
        {planned.key: stat()},
        set(),
        {GUID: listing},
        others,
    )
    assert plan.contradicted == {orphan_changed.key, orphan_gone.key}
    assert plan.unchanged == {planned.key} and plan.work == []
