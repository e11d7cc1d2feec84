"""Alerts as Prefect automations, on a real Prefect server with compressed times: two
clinics deployed from clinic files with an ``alerts`` section, the alerts applied with
``pdata-sync deployments alerts``, and a webhook notification block whose receiver is a real
HTTP server on 127.0.0.1. What the receiver gets must be exactly the expected messages:
one per failed or crashed deployment run, one for the backfill that stopped shrinking,
nothing for runs started by hand from the CLI, and per clinic gone silent a message whose
first one names the last Completed run (which restarted that clinic's clock); only that
periodic reminder may come again, saying no run restarted the clock.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pdata_sync.pipeline import backfill
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SILENT_SECONDS = 15  # alert_after_hours, compressed (Prefect allows 10 s at least)


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _prefect(args: list[str], env: dict[str, str], timeout: int = 180, check: bool = True):
    import os

    out = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert out.returncode == 0, f"prefect {args}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _deployment_run(api, name: str, params: dict | None = None) -> str:
    """A run of the deployment ``name`` (what `prefect deployment run` does), its id."""
    deployment = api.read_deployment_by_name(name)
    return str(api.create_flow_run_from_deployment(deployment.id, parameters=params).id)


def _clinic_file(folder: Path, site, block: str, **config_changes) -> None:
    config = yaml.safe_load(site.config.read_text())
    config.update(config_changes)
    document = {
        "description": f"alert test clinic {config['clinic_id']}",
        "tags": ["alert-test"],
        "alerts": {"notify_block": block, "alert_after_hours": SILENT_SECONDS / 3600},
        "config": config,
    }
    (folder / f"{config['clinic_id']}.yaml").write_text(yaml.safe_dump(document))


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_failed_silent_and_stalled_clinics_are_notified_exactly(
    make_site, prefect_server, seaweed, receiver, tmp_path
):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import ArtifactCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    env = {**prefect_server.env(), **seaweed.env(), "PDATA_SYNC_HOME": str(REPO)}
    quiet = make_site(clinic_id="alert-a")
    stuck = make_site(clinic_id="alert-b")
    # the resolver answers the nil GUID for one patient of clinic alert-b: that patient's
    # images fail on every run, so its backlog never shrinks
    cards = stuck.resolver.state.mapping["alert-b"]
    card = next(c for c, g in cards.items() if list(cards.values()).count(g) == 1)
    victim_guid = cards[card]
    cards[card] = "00000000-0000-0000-0000-000000000000"
    stuck_images = {e["path"] for e in stuck.clinic.expected if e["patient_guid"] == victim_guid}
    assert stuck_images

    block_name = "alert-test-hook"
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        CustomWebhookNotificationBlock(
            name="pdata-sync alerts",
            url=receiver.url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            allow_private_urls=True,
        ).save(block_name, overwrite=True)

    folder = tmp_path / "deployments"
    folder.mkdir()
    block = f"custom-webhook/{block_name}"
    _clinic_file(folder, quiet, block)
    # alert-b's deployment points at a share that is not there: its runs fail
    _clinic_file(folder, stuck, block, pdata_root=str(tmp_path / "no-such-share"))
    assert run_cli(["deployments", "render", "--folder", str(folder), "--output",
                    str(tmp_path / "prefect.yaml")], env).returncode == 0  # fmt: skip
    with SyncPrefectClient(prefect_server.api_url) as api, contextlib.suppress(ObjectAlreadyExists):
        api.create_work_pool(WorkPoolCreate(name="pdata-sync", type="process"))
    _prefect(["deploy", "--prefect-file", str(tmp_path / "prefect.yaml"),
              "--name", "alert-a", "--name", "alert-b"], env)  # fmt: skip

    with SyncPrefectClient(prefect_server.api_url) as api:
        try:
            applied = run_cli(["deployments", "alerts", "--folder", str(folder)], env)
            assert applied.returncode == 0, applied.stderr
            assert applied.stdout.count("created: ") == 6
            again = run_cli(["deployments", "alerts", "--folder", str(folder)], env)
            assert again.stdout.count("updated: ") == 6 and "created" not in again.stdout
            ours = [a for a in api.read_automations() if a.name.startswith("pdata-sync alert-")]
            assert len(ours) == 6

            good = _deployment_run(
                api, "sync-clinic/alert-a", {"config": yaml.safe_load(quiet.config.read_text())}
            )
            _prefect(["flow-run", "execute", good], env, check=False)
            # the stuck clinic's three nights before, as its backfill table holds them
            # (written through Prefect's API, read back by the next sync)
            night = dict.fromkeys(backfill.COLUMNS, 0) | {"left": len(stuck_images)}
            api.create_artifact(
                ArtifactCreate(
                    key="backfill-nights-alert-b", type="table", data=json.dumps([night] * 3)
                )
            )
            failed = _deployment_run(api, "sync-clinic/alert-b")
            _prefect(["flow-run", "execute", failed], env, check=False)
            crashed = _deployment_run(api, "sync-clinic/alert-b")
            api.set_flow_run_state(
                crashed,
                Crashed(message="Flow run infrastructure exited with non-zero status code -9."),
                force=True,
            )
            # the fourth night without progress, a failing run by hand: started from the
            # CLI, not the deployment, it raises no "run failed" alert, only the stall
            code, summary = stuck.sync()
            assert code == 1 and {f["path"] for f in summary["failed"]} == stuck_images
            runs = {run_id: api.read_flow_run(run_id) for run_id in (good, failed, crashed)}
            assert runs[good].state.is_completed(), runs[good].state
            assert runs[failed].state.is_failed(), runs[failed].state
            assert runs[crashed].state.is_crashed(), runs[crashed].state

            expected = {
                f"pdata-sync alert-b: {runs[failed].name} ended Failed",
                f"pdata-sync alert-b: {runs[crashed].name} ended Crashed",
                "pdata-sync alert-b: backfill not shrinking",
                f"pdata-sync alert-a: no completed sync for {SILENT_SECONDS / 3600:g} h",
                f"pdata-sync alert-b: no completed sync for {SILENT_SECONDS / 3600:g} h",
            }
            deadline = time.monotonic() + SILENT_SECONDS * 2 + 60
            while time.monotonic() < deadline:
                if expected <= {m["subject"] for m in receiver.received}:
                    break
                time.sleep(0.5)
            got = list(receiver.received)

            # a clinic file without alerts: its automations go with the next apply
            document = yaml.safe_load((folder / "alert-b.yaml").read_text())
            del document["alerts"]
            (folder / "alert-b.yaml").write_text(yaml.safe_dump(document))
            applied = run_cli(["deployments", "alerts", "--folder", str(folder)], env)
            assert applied.returncode == 0, applied.stderr
            assert sorted(applied.stdout.splitlines()) == sorted(
                [f"deleted: pdata-sync alert-b: {what}"
                 for what in ("run failed", "no completed sync", "backfill stalled")]
                + [f"updated: pdata-sync alert-a: {what}"
                   for what in ("run failed", "no completed sync", "backfill stalled")]
            )  # fmt: skip
        finally:
            for automation in api.read_automations():
                if automation.name.startswith("pdata-sync alert-"):
                    api.delete_automation(automation.id)

    # each event-driven message exactly once; "no completed sync" repeats every period
    # while a clinic stays silent (by design), and a repeat says no run restarted the clock
    silent = {s for s in expected if "no completed sync" in s}
    subjects = [m["subject"] for m in got]
    assert set(subjects) == expected, json.dumps(got, indent=1)
    assert all(subjects.count(s) == 1 for s in expected - silent), json.dumps(got, indent=1)
    repeats = [m for m in got if m["subject"] in silent]
    for subject in silent:
        later = [m["body"] for m in repeats if m["subject"] == subject][1:]
        assert all("No Completed sync since the alert was applied or last sent" in b for b in later)
    body = {}
    for m in got:  # the first message of each subject
        body.setdefault(m["subject"], m["body"])
    first_problem = runs[failed].state.message.splitlines()[0]
    assert "no-such-share" in first_problem
    assert (
        f"First problem: {first_problem[:300]}"
        in body[f"pdata-sync alert-b: {runs[failed].name} ended Failed"]
    )
    assert (
        "non-zero status code -9" in body[f"pdata-sync alert-b: {runs[crashed].name} ended Crashed"]
    )
    # the silent clinic's message names the Completed run that started its clock again;
    # the other clinic never completed one
    silent_a = body[f"pdata-sync alert-a: no completed sync for {SILENT_SECONDS / 3600:g} h"]
    assert f"Last Completed sync: {runs[good].name} ({good})" in silent_a
    silent_b = body[f"pdata-sync alert-b: no completed sync for {SILENT_SECONDS / 3600:g} h"]
    assert "No Completed sync since" in silent_b
    stalled = body["pdata-sync alert-b: backfill not shrinking"]
    assert f"for 3 sync runs in a row: {len(stuck_images)} left" in stalled
    everything = json.dumps(got)
    for value in [*quiet.clinic.phi, *stuck.clinic.phi, card]:
        assert value not in everything


def test_prune_pages_through_hundreds_of_automations(prefect_server, tmp_path):
    """200 clinics have 600 automations, three pages of Prefect's API: `--prune` removes
    those of clinics without a file however many there are, and leaves foreign ones."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import AutomationCore

    from pdata_sync.fleet.alerts import automation_names

    spec = {
        "trigger": {"type": "event", "posture": "Reactive", "expect": ["x.y"], "threshold": 1},
        "actions": [{"type": "do-nothing"}],
    }
    gone = [automation_names(f"gone-{i:03d}")["failed"] for i in range(205)]
    with SyncPrefectClient(prefect_server.api_url) as api:
        for name in [*gone, "someone else's automation"]:
            api.create_automation(AutomationCore.model_validate({"name": name, **spec}))
        folder = tmp_path / "deployments"
        folder.mkdir()
        document = yaml.safe_load((REPO / "deployments" / "clinic-002.yaml").read_text())
        (folder / "clinic-002.yaml").write_text(yaml.safe_dump(document))  # no alerts
        out = run_cli(["deployments", "alerts", "--folder", str(folder), "--prune"],
                      prefect_server.env())  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.splitlines()) == sorted(f"deleted: {n}" for n in gone)
        left = [a.name for a in api.read_automations(limit=200)]
        assert "someone else's automation" in left and not set(gone) & set(left)
        for automation in api.read_automations(limit=200):
            if automation.name == "someone else's automation":
                api.delete_automation(automation.id)
