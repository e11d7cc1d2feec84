"""Names of runs and task runs as an operator reads them in the Prefect UI and CLI.

A sync's flow run is named by clinic and scheduled time in UTC (``clinic-001-2026-12-01T00-30Z``):
one clock for every clinic, whatever its time zone, so names sort in the order the runs were
due and stay unambiguous across daylight-saving changes. A retrieval is named by the first
eight characters of its patientGuid and the same clock (``retrieve-3f2c8a54-2026-12-07T18-40Z``).
Upload task runs are named by their place in the run (``upload-batch-03-of-17``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime


def run_name(clinic_id: str, when: datetime, kind: str = "") -> str:
    """``{clinic_id}[-{kind}]-{YYYY-MM-DD}T{HH-MM}Z`` for a run due at ``when`` (aware)."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H-%MZ")
    return f"{clinic_id}-{kind}-{stamp}" if kind else f"{clinic_id}-{stamp}"


def retrieval_run_name(patient_guid: object, when: datetime) -> str:
    """``retrieve-{first 8 of the guid}-{YYYY-MM-DD}T{HH-MM}Z``; a guid that is not one (the
    flow refuses it) leaves only its hex digits and dashes in the name, or ``invalid``."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H-%MZ")
    text = patient_guid if isinstance(patient_guid, str) else ""
    short = re.sub(r"[^0-9a-fA-F-]", "", text)[:8].lower() or "invalid"
    return f"retrieve-{short}-{stamp}"


def batch_task_name(index: int, total: int, kind: str = "upload") -> str:
    """``upload-batch-03-of-17`` for the third of 17 batches (``index`` counts from 1);
    ``kind`` names what the batches do (``export``)."""
    width = max(2, len(str(total)))
    return f"{kind}-batch-{index:0{width}d}-of-{total:0{width}d}"


def clinic_resource(clinic_id: str) -> str:
    """The Prefect event resource id of a clinic: the sync's events name it, and the
    clinic's automations match it (pdata_sync.fleet.alerts)."""
    return f"pdata-sync.clinic.{clinic_id}"
