"""How many threads of a run may do CPU work at once (``transfer.cpu_threads``).

The worker often runs on the clinic's own server, beside Sidexis. Upload threads mostly wait
on the network; what competes with Sidexis for the CPU is hashing files, reading DICOM
headers and drawing thumbnails. Those sections take a slot of :class:`CpuSlots`, shared by
every thread of the run, so a sync never keeps more than ``cpu_threads`` cores busy however
many uploads are in flight. The default leaves one core free.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType


def default_cpu_threads() -> int:
    """The machine's cores minus one, at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


class CpuSlots:
    """``with slots:`` around a section of CPU work; at most ``size`` threads inside."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("cpu threads must be at least 1")
        self.size = size
        self._slots = threading.BoundedSemaphore(size)

    def __enter__(self) -> CpuSlots:
        self._slots.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._slots.release()
