"""Tasks that read the clinic side: the PDATA tree and the Sidexis database (read-only)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from pdata_sync.base.config import ClinicConfig
from pdata_sync.pipeline.outage import DatabaseCheck, database_check
from pdata_sync.source.pdata import (
    ImageFile,
    PatientFolder,
    Problem,
    check_root,
    scan_images,
    scan_patient_folders,
)
from pdata_sync.source.sidexis_db import (
    MediaRow,
    PatientLookup,
    check_database,
    fetch_media,
    fetch_patients,
    make_engine,
)
from pdata_sync.tasks.catalog import clinic_images
from pdata_sync.tasks.credentials import database_password


@dataclass
class Scan:
    folders: list[PatientFolder]
    images: list[ImageFile]
    skipped: Counter[str]
    problems: list[Problem]
    # the share has no patient folder at all while the archive holds this clinic's images
    # (an unmounted share): why the run must stop; "" when it need not
    empty_share: str = ""


def empty_share(config: ClinicConfig) -> str:
    """Why a share without a single patient folder stops the run, or "" when the catalog
    holds no image of this clinic there either (a new clinic, an empty practice)."""
    archived = clinic_images(config).archived_count()
    if not archived:
        return ""
    return (
        f"share empty: {config.pdata_root} has no patient folder, but the archive holds "
        f"{archived} image(s) of this clinic: is the share mounted? Nothing was uploaded "
        "or retired"
    )


_ENGINES: dict[tuple[str, str | None], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_of(config: ClinicConfig) -> Engine:
    """One engine per database per process: a run's three database tasks share its pooled
    connection (one SQL Server login instead of three; stale connections are pinged)."""
    password = database_password(config.database)
    key = (config.database.url, password)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = make_engine(config.database, password)
        return _ENGINES[key]


@task(name="check-source", cache_policy=NO_CACHE, persist_result=False)
def check_source(config: ClinicConfig) -> None:
    """Fail fast if PDATA or the database is not usable."""
    check_root(config.pdata_root)
    check_database(engine_of(config), config.database)
    get_run_logger().info("PDATA share and Sidexis database are readable")


@task(name="scan-pdata", cache_policy=NO_CACHE, persist_result=False)
def scan_pdata(config: ClinicConfig, only: frozenset[int] | None = None) -> Scan:
    """List patient folders and their image files; ``only``: read just these patients'
    folders (an incremental run; the others are not counted)."""
    folders, skipped, problems = scan_patient_folders(config.pdata_root)
    if not folders and not problems and (why := empty_share(config)):
        get_run_logger().error("clinic %s: %s", config.clinic_id, why)
        return Scan([], [], skipped, [], empty_share=why)
    if only is not None:
        folders = [f for f in folders if f.patient_id in only]
    images, skipped_files, image_problems = scan_images(config.pdata_root, folders)
    skipped.update(skipped_files)
    problems += image_problems
    get_run_logger().info(
        "%d patient folders, %d image files (%d entries skipped, %d unreadable)",
        len(folders),
        len(images),
        sum(skipped.values()),
        len(problems),
    )
    return Scan(folders, images, skipped, problems)


@task(name="query-patients", cache_policy=NO_CACHE, persist_result=False)
def query_patients(config: ClinicConfig, patient_ids: list[int]) -> PatientLookup:
    """CardIds of the listed patients; skipped patients with their reasons."""
    lookup = fetch_patients(engine_of(config), config.database, patient_ids)
    get_run_logger().info(
        "%d of %d patients have CardIds (%d CardIds); %d skipped",
        len(lookup.card_ids),
        len(patient_ids),
        sum(len(cards) for cards in lookup.card_ids.values()),
        len(lookup.skipped),
    )
    return lookup


@dataclass(frozen=True)
class Media:
    """Media rows by imageId, in one object: Prefect links every element of a task's
    result (one level deep) to its state, which for 100,000 rows cost seconds. ``check``:
    what the database no longer says about archived images."""

    rows: dict[int, MediaRow]
    check: DatabaseCheck


@task(name="lookup-media", cache_policy=NO_CACHE, persist_result=False)
def lookup_media(
    config: ClinicConfig, image_ids: list[int], no_patient_row: list[int] | None = None
) -> Media:
    """Media rows (name, deleted flag) of the images to upload, and which archived images
    lost their media row or (``no_patient_row``: images of patients the patient table no
    longer has) their patient row."""
    rows = fetch_media(engine_of(config), config.database, image_ids)
    check = database_check(
        clinic_images(config),
        config.s3.key_template,
        [i for i in image_ids if i not in rows],
        no_patient_row or [],
    )
    logger = get_run_logger()
    logger.info("%d media rows found for %d images", len(rows), len(image_ids))
    if check.media or check.patient_images:
        logger.warning(
            "clinic %s: %d archived image(s) without their media row, %d without their patient row",
            config.clinic_id,
            len(check.media),
            check.patient_images,
        )
    return Media(rows, check)
