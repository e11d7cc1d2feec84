"""Tasks that read the clinic side: the PDATA tree and the Sidexis database (read-only)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from pdata_sync.config import ClinicConfig
from pdata_sync.pdata import (
    ImageFile,
    PatientFolder,
    Problem,
    check_root,
    scan_images,
    scan_patient_folders,
)
from pdata_sync.sidexis_db import (
    MediaRow,
    PatientLookup,
    check_database,
    fetch_media,
    fetch_patients,
    make_engine,
)

from .credentials import database_password


@dataclass
class Scan:
    folders: list[PatientFolder]
    images: list[ImageFile]
    skipped: Counter[str]
    problems: list[Problem]


def _engine(config: ClinicConfig):
    return make_engine(config.database, database_password(config.database))


@task(name="check-source", cache_policy=NO_CACHE, persist_result=False)
def check_source(config: ClinicConfig) -> None:
    """Fail fast if PDATA or the database is not usable."""
    check_root(config.pdata_root)
    engine = _engine(config)
    try:
        check_database(engine, config.database)
    finally:
        engine.dispose()


@task(name="scan-pdata", cache_policy=NO_CACHE, persist_result=False)
def scan_pdata(config: ClinicConfig) -> Scan:
    """List patient folders and their image files."""
    folders, skipped = scan_patient_folders(config.pdata_root)
    images, skipped_files, problems = scan_images(config.pdata_root, folders)
    skipped.update(skipped_files)
    return Scan(folders, images, skipped, problems)


@task(name="query-patients", cache_policy=NO_CACHE, persist_result=False)
def query_patients(config: ClinicConfig, patient_ids: list[int]) -> PatientLookup:
    """CardIds of the listed patients; skipped patients with their reasons."""
    engine = _engine(config)
    try:
        return fetch_patients(engine, config.database, patient_ids)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Media:
    """Media rows by imageId, in one object: Prefect links every element of a task's
    result (one level deep) to its state, which for 100,000 rows cost seconds."""

    rows: dict[int, MediaRow]


@task(name="lookup-media", cache_policy=NO_CACHE, persist_result=False)
def lookup_media(config: ClinicConfig, image_ids: list[int]) -> Media:
    """Media rows (name, deleted flag) of the images to upload."""
    engine = _engine(config)
    try:
        return Media(fetch_media(engine, config.database, image_ids))
    finally:
        engine.dispose()
