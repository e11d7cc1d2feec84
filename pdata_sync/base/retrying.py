"""Retries with exponential backoff for our own calls (the resolver, obstore PUTs).

S3 calls through boto3 use botocore's own retry machinery (``standard`` mode); this module
covers the rest with tenacity (the resolver, and single PUTs through obstore, whose own
retries are off: ADR 0011), honouring a server's ``Retry-After`` when it gives one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from pdata_sync.base.errors import ErrorKind, TransientError, classify

T = TypeVar("T")

MAX_RETRY_AFTER = 120.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def call_with_retries(
    fn: Callable[[], T],
    *,
    max_attempts: int,
    initial_delay: float = 0.5,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry on transient errors with exponential backoff and jitter.

    A :class:`TransientError` carrying ``retry_after`` waits that long instead (capped).
    Non-transient errors and the last transient one are raised unchanged.
    """
    backoff = wait_exponential_jitter(multiplier=initial_delay, max=max_delay, jitter=initial_delay)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
        return backoff(state)

    retrying = Retrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait,
        retry=retry_if_exception(lambda e: classify(e) is ErrorKind.TRANSIENT),
        sleep=sleep,
        reraise=True,
    )
    return retrying(fn)
