"""A clinic's alerts as Prefect automations, written as data from its deployment file.

Three automations per clinic with an ``alerts`` section, each sending through the Prefect
notification block the file names (a webhook, Slack or e-mail block alike):

- ``run failed``: a run of the clinic's sync or verify deployment ends Failed or Crashed.
  The message names the clinic, the run and the first line of the run's state message
  (pdata-sync's own messages carry counts, paths and reasons, never a name or CardId).
- ``no completed sync``: the clinic's sync deployment has had no Completed run for
  ``alert_after_hours`` (a proactive trigger: it fires on what did not happen, so a worker
  that died, a paused schedule or a paused queue is noticed). The clock starts again at
  each Completed run; while the clinic stays silent, the message comes again every period.
- ``backfill stalled``: the sync flow emits ``pdata-sync.backfill.stalled`` when the
  clinic's backlog has not shrunk for :data:`~pdata_sync.pipeline.backfill.STALLED_RUNS`
  runs in a row; this automation turns that event into the message.

Pure: the automations are plain dicts in the shape of Prefect's automations API; the CLI
(``pdata-sync deployments alerts``) looks up the deployments' and block's ids and applies
them. Names start with :data:`PREFIX` and the clinic id, so the applier finds its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pdata_sync.pipeline.backfill import STALLED_EVENT, STALLED_RUNS
from pdata_sync.pipeline.naming import clinic_resource

PREFIX = "pdata-sync"
# Prefect refuses a proactive trigger's window under 10 s; real clinics use hours
MIN_ALERT_AFTER_HOURS = 10 / 3600
_BLOCK = r"^[a-z0-9-]+/[a-z0-9][a-z0-9-]*$"


class AlertsConfig(BaseModel):
    """A clinic file's ``alerts`` section."""

    model_config = ConfigDict(extra="forbid")

    notify_block: str = Field(
        description="The Prefect notification block to send through, as 'block-type/name' "
        "(e.g. 'slack-webhook/dental-ops', 'custom-webhook/ops-pager', 'email/ops')."
    )
    alert_after_hours: float = Field(
        36.0,
        ge=MIN_ALERT_AFTER_HOURS,
        le=24 * 31,
        description="Notify when the clinic's sync deployment has had no Completed run for "
        "this many hours. 36: one missed night of a nightly schedule.",
    )
    on_failure: bool = Field(True, description="Notify when a sync or verify run fails.")
    on_stalled_backfill: bool = Field(
        True,
        description=f"Notify when the backlog has not shrunk for {STALLED_RUNS} sync runs.",
    )

    @field_validator("notify_block")
    @classmethod
    def _block(cls, value: str) -> str:
        import re

        if not re.fullmatch(_BLOCK, value):
            raise ValueError(
                f"{value!r}: name the block as 'block-type/name', e.g. 'slack-webhook/ops'"
            )
        return value


def automation_names(clinic_id: str) -> dict[str, str]:
    """The clinic's automation names by alert kind."""
    return {
        kind: f"{PREFIX} {clinic_id}: {label}"
        for kind, label in (
            ("failed", "run failed"),
            ("silent", "no completed sync"),
            ("stalled", "backfill stalled"),
        )
    }


def owner(name: str) -> str | None:
    """The clinic id in one of our automation names, else None (not ours)."""
    head, sep, _ = name.partition(": ")
    prefix, space, clinic_id = head.partition(" ")
    return clinic_id if sep and space and prefix == PREFIX and clinic_id else None


def _notify(block_id: str, subject: str, body: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "send-notification",
            "block_document_id": block_id,
            "subject": subject,
            "body": body,
        }
    ]


def _hours(value: float) -> str:
    return f"{value:g}"


def automations(
    clinic_id: str,
    alerts: AlertsConfig,
    block_id: str,
    sync_deployment_id: str,
    verify_deployment_id: str | None,
    source: str,
) -> dict[str, dict[str, Any]]:
    """The clinic's automations by name, as Prefect's ``POST /automations/`` bodies.
    ``source`` (the clinic file) goes into each description: edits made in the UI are
    overwritten by the next apply."""
    names = automation_names(clinic_id)
    described = f"Managed by `pdata-sync deployments alerts` from {source}; edit the file."
    deployments = [f"prefect.deployment.{sync_deployment_id}"]
    if verify_deployment_id:
        deployments.append(f"prefect.deployment.{verify_deployment_id}")
    wanted: dict[str, dict[str, Any]] = {}
    if alerts.on_failure:
        wanted[names["failed"]] = {
            "name": names["failed"],
            "description": f"A sync or verify run of clinic {clinic_id} ended Failed or "
            f"Crashed. {described}",
            "enabled": True,
            "trigger": {
                "type": "event",
                "posture": "Reactive",
                "expect": ["prefect.flow-run.Failed", "prefect.flow-run.Crashed"],
                "match": {"prefect.resource.id": "prefect.flow-run.*"},
                "match_related": {"prefect.resource.id": deployments},
                "threshold": 1,
                "within": 0,
            },
            "actions": _notify(
                block_id,
                f"pdata-sync {clinic_id}: {{{{ flow_run.name }}}} ended "
                "{{ flow_run.state.name }}",
                f"Clinic: {clinic_id}\n"
                "Run: {{ flow_run.name }} ({{ flow_run.id }}) of {{ deployment.name }}\n"
                "State: {{ flow_run.state.name }}\n"
                "First problem: "
                "{{ ((flow_run.state.message or 'no message') ~ '').splitlines()[0][:300] }}\n",
            ),
        }
    hours = _hours(alerts.alert_after_hours)
    wanted[names["silent"]] = {
        "name": names["silent"],
        "description": f"Clinic {clinic_id}'s sync deployment has had no Completed run for "
        f"{hours} h. {described}",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            # each Completed run starts the clock again (Prefect's heartbeat pattern); the
            # first period starts when Prefect first evaluates the automation
            "after": ["prefect.flow-run.Completed"],
            "expect": ["prefect.flow-run.Completed"],
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.id": deployments[0]},
            "threshold": 1,
            "within": round(alerts.alert_after_hours * 3600, 3),
        },
        "actions": _notify(
            block_id,
            f"pdata-sync {clinic_id}: no completed sync for {hours} h",
            f"Clinic {clinic_id} has had no Completed sync run for {hours} hours. Is its "
            "worker running, its deployment's schedule active, its work queue not paused?\n"
            "{% if flow_run.name %}Last Completed sync: {{ flow_run.name }} "
            "({{ flow_run.id }}), ended {{ event.occurred }}."
            "{% else %}No Completed sync since the alert was applied or last sent."
            "{% endif %}\n",
        ),
    }
    if alerts.on_stalled_backfill:
        wanted[names["stalled"]] = {
            "name": names["stalled"],
            "description": f"Clinic {clinic_id}'s backlog has not shrunk for "
            f"{STALLED_RUNS} sync runs. {described}",
            "enabled": True,
            "trigger": {
                "type": "event",
                "posture": "Reactive",
                "expect": [STALLED_EVENT],
                "match": {"prefect.resource.id": clinic_resource(clinic_id)},
                "threshold": 1,
                "within": 0,
            },
            "actions": _notify(
                block_id,
                f"pdata-sync {clinic_id}: backfill not shrinking",
                f"Clinic {clinic_id}: the images not yet archived have not become fewer for "
                "{{ event.payload.runs }} sync runs in a row: {{ event.payload.left }} "
                "left ({{ event.payload.left_gb }} GB). Failed images and a window too "
                f"short for the uplink keep a backlog; see the clinic's backfill-nights "
                "artifact and its runs' problems.\n",
            ),
        }
    return wanted
