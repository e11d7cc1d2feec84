"""``pdata-sync deployments alerts``: apply the clinics' alerts (pdata_sync.fleet.alerts) to
the Prefect server as automations, after ``prefect deploy --all`` created the deployments.

Idempotent: an automation of ours (by name) is updated in place, a missing one created, and
one a clinic file no longer asks for deleted; ``--prune`` also deletes those of clinics
that have no file in the folder any more. Every lookup is done before the first change, so
a missing deployment or block changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pdata_sync.base.errors import ConfigError
from pdata_sync.console import EXIT_OK, refuse


def _block_id(client: Any, notify_block: str) -> str:
    from prefect.exceptions import ObjectNotFound

    slug, name = notify_block.split("/", 1)
    try:
        document = client.read_block_document_by_name(name, slug, include_secrets=False)
    except ObjectNotFound:
        raise ConfigError(
            f"alerts.notify_block {notify_block!r}: no such block on the Prefect server; "
            "create it first (Prefect UI: Blocks, or its Python class's .save())"
        ) from None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    if "notify" not in capabilities:
        raise ConfigError(f"alerts.notify_block {notify_block!r} is not a notification block")
    return str(document.id)


def _deployment_id(client: Any, name: str) -> str:
    from prefect.exceptions import ObjectNotFound

    try:
        return str(client.read_deployment_by_name(name).id)
    except ObjectNotFound:
        raise ConfigError(
            f"deployment {name!r} is not on the Prefect server: run `prefect deploy --all` "
            "first (docs/operations.md)"
        ) from None


def wanted_automations(client: Any, folder: Path) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """The clinics of ``folder`` and every automation their files ask for, by name."""
    from pdata_sync.fleet.alerts import automations
    from pdata_sync.fleet.deployments import load_files

    clinics: set[str] = set()
    wanted: dict[str, dict[str, Any]] = {}
    blocks: dict[str, str] = {}
    for path, d in load_files(folder):
        clinics.add(d.name)
        if d.alerts is None:
            continue
        if d.alerts.notify_block not in blocks:
            blocks[d.alerts.notify_block] = _block_id(client, d.alerts.notify_block)
        wanted |= automations(
            d.name,
            d.alerts,
            blocks[d.alerts.notify_block],
            _deployment_id(client, f"sync-clinic/{d.name}"),
            _deployment_id(client, f"verify-clinic/{d.name}-verify") if d.verify_schedule else None,
            source=str(path),
        )
    return clinics, wanted


def apply(client: Any, folder: Path, prune: bool) -> dict[str, list[str]]:
    """Make the server's automations of ours what ``folder`` asks for; the names changed."""
    from prefect.client.schemas.sorting import AutomationSort
    from prefect.events.schemas.automations import AutomationCore

    from pdata_sync.fleet.alerts import owner
    from pdata_sync.tasks.api_pages import all_pages

    clinics, wanted = wanted_automations(client, folder)
    models = {name: AutomationCore.model_validate(spec) for name, spec in wanted.items()}
    done: dict[str, list[str]] = {"created": [], "updated": [], "deleted": []}
    existing = {}
    # every page (200 clinics have 600 automations), in a stable order for paging
    by_name = AutomationSort.NAME_ASC
    for automation in all_pages(lambda **page: client.read_automations(sort=by_name, **page)):
        clinic = owner(automation.name)
        if clinic is None:
            continue  # not ours
        if automation.name in models and automation.name not in existing:
            existing[automation.name] = automation.id
        elif clinic in clinics or prune:  # a clinic's alert switched off, or a second copy
            client.delete_automation(automation.id)
            done["deleted"].append(automation.name)
    for name, model in models.items():
        if name in existing:
            client.update_automation(existing[name], model)
            done["updated"].append(name)
        else:
            client.create_automation(model)
            done["created"].append(name)
    return done


def cmd_deployments_alerts(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            done = apply(client, Path(args.folder), args.prune)
    except ConfigError as exc:
        return refuse(str(exc))
    for what, names in done.items():
        for name in names:
            print(f"{what}: {name}")
    counts = ", ".join(f"{len(names)} {what}" for what, names in done.items())
    print(f"alerts of {args.folder}/ applied: {counts}", file=sys.stderr)
    return EXIT_OK
