"""Tasks of incremental runs: decide which patient folders a sync reads, and record what it
finished (pdata_sync.source.changes; docs/adr/0010-incremental-runs.md)."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pdata_sync.base.config import ClinicConfig
from pdata_sync.catalog import SyncMarks, destination_of, now
from pdata_sync.source.changes import (
    FULL,
    UNTRACKED,
    WHY_FUTURE,
    ChangeSet,
    Record,
    changed_patients,
    choose_mode,
    patient_digest,
    patient_facts,
    settings_digest,
)
from pdata_sync.source.pdata import scan_patient_folders
from pdata_sync.source.sidexis_db import fetch_media_by_patient, fetch_patients
from pdata_sync.tasks.catalog import open_catalog
from pdata_sync.tasks.resolve import resolve
from pdata_sync.tasks.source import engine_of


def clinic_marks(config: ClinicConfig) -> SyncMarks:
    destination = destination_of(config.s3.endpoint_url, config.s3.bucket)
    return open_catalog(config).marks(config.clinic_id, destination)


def settings_of(config: ClinicConfig) -> str:
    """The digest of the settings that decide what a patient's folder turns into."""
    database = config.database.model_dump(mode="json", exclude={"password_secret_block"})
    return settings_digest(
        {
            "clinic_id": config.clinic_id,
            "pdata_root": config.pdata_root,
            "database": database,
            "key_template": config.s3.key_template,
            "resolver": config.resolver.url,
            # a new second destination must receive every image, not only the changed ones
            "orthanc": config.orthanc.url if config.orthanc is not None else None,
        }
    )


@task(name="detect-changes", cache_policy=NO_CACHE, persist_result=False)
def detect_changes(config: ClinicConfig, requested_full: bool) -> ChangeSet:
    """Full or incremental, and for an incremental run the patients whose folders to read:
    those whose rows in the patient and media tables or whose patientGuids differ from what
    the catalog recorded when their folder was last handled completely."""
    logger = get_run_logger()
    marks = clinic_marks(config)
    settings = settings_of(config)
    mode, why = choose_mode(
        enabled=config.incremental,
        media_patient_column=bool(config.database.media_patient_column),
        requested_full=requested_full,
        last_full=marks.last_full(),
        settings=settings,
        full_every=timedelta(days=config.full_every_days),
        now=now(),
        latest_mark=marks.latest(),
    )
    if why == WHY_FUTURE:
        logger.warning("clinic %s: full run: %s", config.clinic_id, why)
    if why in UNTRACKED:  # no run of this clinic can be incremental: nothing to compare
        logger.info("clinic %s: full run: %s", config.clinic_id, why)
        return ChangeSet(mode=FULL, full_reason=why, digests={}, read=None, settings=settings)
    folders, _, _ = scan_patient_folders(config.pdata_root)
    ids = sorted({f.patient_id for f in folders})
    engine = engine_of(config)
    lookup = fetch_patients(engine, config.database, ids)
    media = fetch_media_by_patient(engine, config.database, ids)
    cards = sorted({c for cs in lookup.card_ids.values() for c in cs})
    answers = resolve(config, cards)
    facts = patient_facts(
        ids,
        card_ids=lookup.card_ids,
        skipped=lookup.skipped,
        mapping=answers.mapping,
        failed=answers.failed,
        media=media,
    )
    digests = {pid: patient_digest(f) for pid, f in facts.items()}
    expected = {
        pid: frozenset(m.image_id for m in f.media if not m.deleted) for pid, f in facts.items()
    }
    read = None if mode == FULL else changed_patients(digests, marks.digests())
    if read is None:
        logger.info("clinic %s: full run: %s", config.clinic_id, why)
    else:
        logger.info(
            "clinic %s: incremental run: %d of %d patient folders changed",
            config.clinic_id,
            len(read),
            len(ids),
        )
    return ChangeSet(
        mode=mode,
        full_reason=why,
        digests=digests,
        read=read,
        expected=expected,
        settings=settings,
    )


@task(name="record-changes", cache_policy=NO_CACHE, persist_result=False)
def record_changes(
    config: ClinicConfig, changes: ChangeSet, record: Record, started_at: datetime
) -> None:
    """Store what this run finished, in one transaction (nothing when the run stopped)."""
    clinic_marks(config).record(
        record.keep,
        record.forget,
        full_started_at=started_at if record.full else None,
        settings=changes.settings,
        flow_run_id=flow_run.get_id(),
    )
    get_run_logger().info(
        "clinic %s: %d patient(s) recorded as done, %d to read again next run",
        config.clinic_id,
        len(record.keep),
        len(record.forget),
    )
