"""Progress of the sync running in this process, for a person watching a terminal.

The first sync of a clinic takes hours, often nights; the CLI shows images done of the
total, the images left, the upload rate in Mbit/s (the unit of a clinic's uplink), an
estimate of the time left and, when the run has a window (``transfer.stop_at``), when it
ends. The line is updated in place on stderr when stderr is a terminal
(nothing is added with ``--json`` or without a terminal). The flow announces the total, the
uploader reports each image it finishes; both are no-ops unless a listener is installed, so
a worker's runs are unaffected (their progress is the run's progress artifact).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TextIO


class Listener(Protocol):
    def planned(self, images: int, window_ends: datetime | None = None) -> None: ...
    def advance(self, images: int, nbytes: int) -> None: ...


_listener: Listener | None = None


def listen(listener: Listener | None) -> None:
    """Send this process's progress to ``listener`` (None: nowhere)."""
    global _listener
    _listener = listener


def planned(images: int, window_ends: datetime | None = None) -> None:
    """The run will go through ``images`` images, starting none past ``window_ends``."""
    if _listener is not None:
        _listener.planned(images, window_ends)


def advance(images: int, nbytes: int = 0) -> None:
    """``images`` more images are done, ``nbytes`` of them uploaded."""
    if _listener is not None:
        _listener.advance(images, nbytes)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TerminalProgress:
    """One status line on a terminal, rewritten in place at most every ``interval`` s."""

    CLEAR = "\r\x1b[K"

    def __init__(
        self,
        stream: TextIO,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.total = 0
        self.done = 0
        self.nbytes = 0
        self.started = clock()
        self.window_ends: datetime | None = None
        self._shown = ""
        self._last = float("-inf")
        self._lock = threading.RLock()

    def planned(self, images: int, window_ends: datetime | None = None) -> None:
        with self._lock:
            self.total, self.done, self.nbytes, self.started = images, 0, 0, self.clock()
            self.window_ends = window_ends
            self._draw(force=True)

    def advance(self, images: int, nbytes: int) -> None:
        with self._lock:
            self.done += images
            self.nbytes += nbytes
            self._draw(force=self.done >= self.total)

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.nbytes * 8 / elapsed / 1e6
        left = max(0, self.total - self.done)
        text = f"{self.done}/{self.total} images  {left:,} left  {rate:.1f} Mbit/s"
        if 0 < self.done < self.total:
            text += f"  ETA {_duration(elapsed / self.done * left)}"
        elif self.done >= self.total:
            text += f"  done in {_duration(elapsed)}"
        if self.window_ends is not None and left:
            text += f"  window ends {self.window_ends:%H:%M}"
        return text

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self._shown = self.line()
        self.stream.write(self.CLEAR + self._shown)
        self.stream.flush()

    def finish(self) -> None:
        """Leave the last line on the terminal and end it."""
        with self._lock:
            if self._shown:
                self._shown = self.line()
                self.stream.write(self.CLEAR + self._shown + "\n")
                self.stream.flush()
                self._shown = ""


class StatusLineStream:
    """Stands in for the terminal's stream while a status line is shown: whatever else is
    written (log lines of pdata-sync and Prefect) clears the line first and, once a line of
    it is complete, draws the status line again below it."""

    def __init__(self, stream: TextIO, progress: TerminalProgress):
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        with self._progress._lock:
            shown = self._progress._shown
            if shown:
                self._stream.write(TerminalProgress.CLEAR)
            written = self._stream.write(text)
            if shown and text.endswith("\n"):
                self._stream.write(shown)
            return written

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
