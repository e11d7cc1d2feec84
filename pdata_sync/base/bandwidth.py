"""A clinic's upload bandwidth: a cap, a timetable of caps by time of day in the clinic's
time zone, and the one throttle of a process that every upload thread and multipart part
takes its bytes from (docs/bandwidth.md).

The throttle paces requests: before a body goes out it takes as many bytes from a token
bucket as the body holds, waiting while the bucket is ahead of the rate of that moment,
and the body then goes at the link's speed. A body that would take longer than
:data:`GRAIN_SECONDS` at the cap is instead read out through :class:`PacedBody`, 64 KB
at a time, each chunk taking its own bytes: the rate holds over any window of a few
seconds, not only over a few bodies.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

MBIT = 1_000_000 / 8  # bytes per second in one Mbit/s
# Pre-paid pacing sends a body whole at the link's speed when its turn comes: over a window
# of W seconds the rate is off by up to one body's time at the cap. A body longer than this
# at the cap is paced as it goes instead, chunk by chunk: the rate then stays within 5 %
# over any 10 s.
GRAIN_SECONDS = 0.5
PACED_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Window:
    """From ``start`` to ``end`` (clinic time, ``end`` excluded; a window may run past
    midnight), uploads at most ``mbit`` Mbit/s."""

    start: clock_time
    end: clock_time
    mbit: float

    def holds(self, at: clock_time) -> bool:
        if self.start < self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end  # past midnight


@dataclass(frozen=True)
class Bandwidth:
    """The cap in force at any moment: the window's that holds it, else ``default_mbit``
    (None: no cap)."""

    default_mbit: float | None = None
    windows: tuple[Window, ...] = ()
    timezone: str | None = None  # IANA name; None: the worker's local time

    @property
    def capped(self) -> bool:
        return self.default_mbit is not None or bool(self.windows)

    def mbit_at(self, at: datetime) -> float | None:
        """The cap (Mbit/s) at ``at`` (an aware datetime), None for none."""
        local = at.astimezone(ZoneInfo(self.timezone)) if self.timezone else at.astimezone()
        moment = local.time()
        for window in self.windows:
            if window.holds(moment):
                return window.mbit
        return self.default_mbit


def window_end(start: datetime, stop_at: clock_time, timezone: str | None) -> datetime:
    """The first ``stop_at`` (clinic time) after ``start``: when a run that started then
    must stop starting uploads."""
    zone = ZoneInfo(timezone) if timezone else None
    local = start.astimezone(zone) if zone else start.astimezone()
    end = local.replace(hour=stop_at.hour, minute=stop_at.minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    return end


def overlapping(windows: Sequence[Window]) -> tuple[Window, Window] | None:
    """Two windows that share a minute, if any (a timetable must say one cap per moment)."""
    minutes = {}
    for window in windows:
        for minute in range(24 * 60):
            at = clock_time(minute // 60, minute % 60)
            if window.holds(at):
                if minute in minutes:
                    return minutes[minute], window
                minutes[minute] = window
    return None


class Throttle:
    """One process's upload pace for one bandwidth setting: :meth:`take` returns when
    ``n`` more bytes fit under the cap of this moment. Thread-safe; the cap is read again
    at every take, so a timetable that switches during a run changes the pace at once."""

    def __init__(
        self,
        bandwidth: Bandwidth,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bandwidth = bandwidth
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = 0.0  # when the bytes taken so far have gone out at the cap
        self.taken = 0  # bytes, for reports

    def whole_body_too_coarse(self, n: int) -> bool:
        """Whether a body of ``n`` bytes, sent whole at the link's speed once its turn comes,
        would take longer than :data:`GRAIN_SECONDS` at the cap in force: such a body must
        be paced as it is sent (:class:`PacedBody`) for the rate to hold over any window."""
        mbit = self.bandwidth.mbit_at(self._wall())
        return mbit is not None and n > mbit * MBIT * GRAIN_SECONDS

    def take(self, n: int) -> None:
        mbit = self.bandwidth.mbit_at(self._wall())
        with self._lock:
            self.taken += n
            if mbit is None:
                self._next_free = 0.0
                return
            now = self._monotonic()
            start = max(now, self._next_free)
            self._next_free = start + n / (mbit * MBIT)
            wait = start - now
        if wait > 0:
            self._sleep(wait)


class PacedBody:
    """A request body (bytes or a binary file) read out under a :class:`Throttle`, at most
    :data:`PACED_CHUNK` bytes per read: what goes on the wire keeps to the cap as it is sent,
    not only between bodies. ``seek``/``tell`` are the body's own, so a retry can rewind."""

    def __init__(self, body: Any, throttle: Throttle):
        self._body = io.BytesIO(body) if isinstance(body, bytes | bytearray) else body
        self._throttle = throttle

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > PACED_CHUNK:
            size = PACED_CHUNK
        chunk = self._body.read(size)
        if chunk:
            self._throttle.take(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._body.seek(offset, whence)

    def tell(self) -> int:
        return self._body.tell()
