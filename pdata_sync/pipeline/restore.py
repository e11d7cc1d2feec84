"""Restore's look-up for objects archived without their source path: the clinic's database
says which patient folder an image id belongs to, and the resolver confirms that patient is
the object's patientGuid (pdata_sync.archive.restore). Either may be gone on the day of a
restore: then those objects go to ``unmapped/`` and the run says why."""

from __future__ import annotations

from pdata_sync.archive.restore import Locate
from pdata_sync.base.errors import describe
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.steps import resolve
from pdata_sync.source.sidexis_db import fetch_media, fetch_patients


def database_locator(ctx: RunContext) -> Locate:
    """``locate`` for :func:`pdata_sync.archive.restore.restore`, through ``ctx``'s database
    and resolver: ``P_{patientId}/0000_{imageId}.dcm`` for an image whose media row names a
    patient whose CardId resolves to the object's patientGuid."""
    cfg = ctx.config.database

    def locate(pairs: list[tuple[int, str]]) -> dict[tuple[int, str], str]:
        try:
            media = fetch_media(ctx.engine, cfg, [image_id for image_id, _ in pairs])
            patients = {row.patient_id for row in media.values() if row.patient_id is not None}
            lookup = fetch_patients(ctx.engine, cfg, patients)
            cards = [card for found in lookup.card_ids.values() for card in found]
            resolved = resolve(ctx, cards).mapping if cards else {}
        except Exception as exc:  # noqa: BLE001 - the restore goes on without them
            ctx.log.warning(
                "restore: the clinic's database or resolver did not answer (%s); images "
                "archived without their source path go to unmapped/",
                describe(exc),
            )
            return {}
        found: dict[tuple[int, str], str] = {}
        for image_id, guid in pairs:
            row = media.get(image_id)
            if row is None or row.patient_id is None:
                continue
            guids = {resolved.get(card) for card in lookup.card_ids.get(row.patient_id, [])}
            if guid in guids:
                found[(image_id, guid)] = f"P_{row.patient_id}/0000_{image_id}.dcm"
        return found

    return locate
