"""A correction to Prefect's flow engine: a flow run ends when its work is done.

Prefect (3.8.8, still so in 3.9.1) sends a flow run's heartbeats from a daemon thread that
sleeps in one-second steps and checks a stop event between them. When a *synchronous* flow
run ends, the engine sets that event and joins the thread, so the run waits for the step in
progress: up to a second, half a second on average, after the flow's last task. On the
build machine that was a quarter of the whole cost of a Prefect flow run (2.24 s against
1.67 s, median of 8 alternating runs), paid by every CLI run and every worker run.

Joining protects nothing: the thread checks the stop event before every heartbeat, so once
it is set no heartbeat is sent, joined or not, and the thread ends at its next step.
Prefect's own asynchronous engine does not join it (``join_on_exit=False``). Importing
this module makes the synchronous engine do the same; heartbeats during the run are
unchanged (tests/integration/test_flow_exit.py checks both; ADR 0014). Every flow module
imports it, because a worker loads a flow's file by path, without this package's
``__init__``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import prefect.flow_engine as _engine

_MARK = "_pdata_sync_no_join"


def _install() -> None:
    original = getattr(_engine, "_send_heartbeats", None)
    if original is None or getattr(original, _MARK, False):
        return
    if "join_on_exit" not in inspect.signature(original).parameters:
        return  # another Prefect: left as it is (tests/integration/test_flow_exit.py fails)

    @contextlib.contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield

    setattr(send_heartbeats, _MARK, True)
    _engine._send_heartbeats = send_heartbeats


_install()
