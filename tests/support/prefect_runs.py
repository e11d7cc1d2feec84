"""Reading a finished flow run's task runs from a Prefect server.

Prefect 3 records task-run states through its event pipeline, so a flow run can be
Completed before its task runs are readable. Reading them once right after the flow
finished was a flake (CI saw an empty set); these helpers wait for the expected runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for_task_runs(
    client: Any,
    flow_run_id: Any,
    done: Callable[[list[Any]], bool],
    timeout: float = 30.0,
) -> list[Any]:
    """The flow run's task runs once ``done(runs)`` holds, or the last read at ``timeout``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )
        if done(runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def has_task(name: str) -> Callable[[list[Any]], bool]:
    """A ``done`` predicate: a task run called ``name`` is recorded."""
    return lambda runs: any(t.name == name for t in runs)


def at_least(count: int) -> Callable[[list[Any]], bool]:
    """A ``done`` predicate: ``count`` task runs are recorded, all in a final state."""
    return lambda runs: (
        len(runs) >= count
        and all(t.state_type is not None and t.state_type.value in FINAL for t in runs)
    )


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
