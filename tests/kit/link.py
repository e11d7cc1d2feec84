"""A shaped link for tests and benchmarks: a TCP relay on 127.0.0.1 in front of the S3
server that behaves like a clinic's uplink to the cloud - a round-trip time, and an upload
bandwidth shared by every connection (as one uplink is). It records when each chunk went
up (:attr:`ShapedLink.sent`), so a test can measure the rate a client kept to.

Used by ``compare_tools.py --link RTT_MS:UP_MBIT`` (on loopback the client's CPU decides
the race; on a link, the link does, as in production) and by the bandwidth tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

CHUNK = 64 * 1024


class _Bucket:
    """Token bucket: ``take(n)`` returns when ``n`` more bytes fit in the rate."""

    def __init__(self, bytes_per_second: float):
        self.rate = bytes_per_second
        self.next_free = 0.0

    async def take(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        if self.next_free - now > 0.001:
            await asyncio.sleep(self.next_free - now)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    one_way: float,
    bucket: _Bucket | None,
    sent: list[tuple[float, int]] | None = None,
) -> None:
    """Copy ``reader`` to ``writer``: each chunk leaves ``one_way`` seconds after it came
    in (after its turn in ``bucket``), in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            if sent is not None:
                sent.append((time.monotonic(), len(data)))

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            if data and bucket is not None:
                await bucket.take(len(data))
            await queue.put((loop.time() + one_way, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()


class ShapedLink:
    """``with ShapedLink("127.0.0.1", 8333, rtt_ms=20, up_mbit=100) as link: link.url``"""

    def __init__(self, host: str, port: int, *, rtt_ms: float, up_mbit: float):
        self.upstream = (host, port)
        self.one_way = rtt_ms / 2000
        self.up = _Bucket(up_mbit * 1e6 / 8)
        self.port = 0
        self.sent: list[tuple[float, int]] = []  # (time.monotonic(), bytes) of each chunk up
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shaped-link", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pump(reader, up_writer, self.one_way, self.up, self.sent),
            _pump(up_reader, writer, self.one_way, None),
        )
        for w in (writer, up_writer):
            w.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=CHUNK)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> ShapedLink:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def maybe_link(endpoint: str, spec: str | None) -> Iterator[str]:
    """The endpoint to give the tools: ``endpoint`` itself, or a shaped link in front of it
    (``spec`` = ``RTT_MS:UP_MBIT``, e.g. ``20:100``)."""
    if not spec:
        yield endpoint
        return
    rtt, mbit = (float(x) for x in spec.split(":"))
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    with ShapedLink(host, int(port), rtt_ms=rtt, up_mbit=mbit) as link:
        yield link.url


def rate_mbit(sent: list[tuple[float, int]], start: float, end: float) -> float:
    """Mbit/s of the chunks that went up between ``start`` and ``end`` (monotonic)."""
    total = sum(n for at, n in sent if start <= at < end)
    return total * 8 / 1e6 / (end - start)


def bodies(sent: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The chunks from the first body's to the last body's (requests' headers and small
    calls before and after the uploads are not the link's work)."""
    big = [i for i, (_, n) in enumerate(sent) if n >= 16 * 1024]
    return sent[big[0] : big[-1] + 1] if big else []


def busy(sent: list[tuple[float, int]], link_mbit: float) -> tuple[float, float]:
    """(share of the link used, seconds) from the first body to the last."""
    span = bodies(sent)
    if len(span) < 2:
        return 0.0, 0.0
    seconds = span[-1][0] - span[0][0]
    return sum(n for _, n in span) * 8 / 1e6 / seconds / link_mbit, seconds


def windows(sent: list[tuple[float, int]], seconds: float) -> list[float]:
    """Mbit/s over every window of ``seconds`` that starts at a chunk and fits in the span."""
    rates: list[float] = []
    if not sent:
        return rates
    end, total, j = sent[-1][0], 0, 0
    for i, (start, _) in enumerate(sent):
        if start + seconds > end:
            break
        while j < len(sent) and sent[j][0] < start + seconds:
            total += sent[j][1]
            j += 1
        rates.append(total * 8 / 1e6 / seconds)
        total -= sent[i][1]
    return rates
