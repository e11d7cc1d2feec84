"""The clock pdata-sync trusts, and what it does not: a recorded time far in the future.

A confirmation or a run dated later than now plus :data:`CLOCK_TOLERANCE` comes from a wrong
clock (a worker whose clock ran ahead, a restored VM), not from another worker's small skew.
Trusted as it is, it would vouch for an object, or keep a full run from being due, until
that date (docs/product-rules.md §8.6). No imports from the rest of the package.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

CLOCK_TOLERANCE = timedelta(minutes=10)


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything the catalog writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def in_the_future(at: datetime | None, reference: datetime | None = None) -> bool:
    """``at`` lies more than :data:`CLOCK_TOLERANCE` after ``reference`` (default now)."""
    at = aware(at)
    return at is not None and at > (reference or now()) + CLOCK_TOLERANCE
