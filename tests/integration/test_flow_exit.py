"""A flow run of pdata-sync returns as soon as its work is done, and still sends heartbeats.

Prefect 3.8.8 sends a flow run's heartbeats from a thread that sleeps in steps of one second
and, in a synchronous flow, joins that thread when the run ends: every run waited up to a
second (half a second on average) after its last task, a quarter of the whole cost of a
Prefect flow run measured on the build machine. ``flows`` stops the wait without stopping
the heartbeats (:mod:`pdata_sync.flows._prefect_engine`). Run in a process of its own against a real
Prefect server, as the CLI and a worker run flows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

FLOW = """
import json, time
import pdata_sync.flows.sync  # as the CLI does: every flow module imports the correction
from prefect import flow
from prefect.runtime import flow_run

@flow
def quick():
    time.sleep(0.05)  # the heartbeat thread is now in its first one-second sleep
    return flow_run.id, time.monotonic()

run_id, body_done = quick()
print(json.dumps({"flow_run_id": run_id, "returned_after": time.monotonic() - body_done}))
"""


def heartbeats_of(client, flow_run_id: str, timeout: float = 30.0) -> list:
    """The heartbeat events the server has recorded for the flow run (they are written
    by its event pipeline, some time after they were sent)."""
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    deadline = time.monotonic() + timeout
    while True:
        events = client.read_events(filter=event_filter, limit=10).events
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_a_flow_run_returns_when_its_body_is_done_and_still_sends_heartbeats(
    prefect_server, tmp_path: Path
):
    from prefect.client.orchestration import SyncPrefectClient

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", FLOW],
        env={**prefect_server.env(), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # with Prefect's join the call returned about 0.9 s after the body
    assert result["returned_after"] < 0.5, result
    with SyncPrefectClient(prefect_server.api_url) as client:
        run = client.read_flow_run(result["flow_run_id"])
        assert run.state is not None and run.state.is_completed()
        assert heartbeats_of(client, result["flow_run_id"]), "the run sent no heartbeat"
