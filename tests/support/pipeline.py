"""One clinic's sync and verify without Prefect: the same core functions the flows' tasks
call, in the same order, so the model-based test can run hundreds of syncs in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdata_sync.archive.s3_store import abort_interrupted_uploads, make_client
from pdata_sync.base.config import ClinicConfig
from pdata_sync.catalog import Catalog, ClinicImages, destination_of
from pdata_sync.identity.keys import parse_key
from pdata_sync.identity.resolver import ResolverClient
from pdata_sync.pipeline.outage import DatabaseCheck, database_check
from pdata_sync.pipeline.plan import Plan, PlannedImage, build_plan, make_batches, resolve_patients
from pdata_sync.pipeline.recheck import Recheck, recheck_content
from pdata_sync.pipeline.retirement import RetireReport, SafetyLimit, retire, source_view
from pdata_sync.pipeline.triage import FileCheck
from pdata_sync.pipeline.uploader import UNCHANGED, UPLOADED, BatchUploader, Outcome
from pdata_sync.pipeline.verify import Drift, verify_catalog
from pdata_sync.source.pdata import Problem, scan_images, scan_patient_folders
from pdata_sync.source.sidexis_db import fetch_media, fetch_patients, make_engine, qualified


@dataclass
class SyncResult:
    planned: list[PlannedImage] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    retirement: RetireReport | None = None
    recheck: Recheck | None = None
    stopped: str = ""  # why the run stopped before any upload (the database check)
    failed: list[Problem] = field(default_factory=list)  # planning's failures (conflicts)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


def images_of(catalog: Catalog, config: ClinicConfig) -> ClinicImages:
    return catalog.images(
        config.clinic_id, destination_of(config.s3.endpoint_url, config.s3.bucket)
    )


def belongs(config: ClinicConfig):
    def check(key: str) -> bool:
        fields = parse_key(key, config.s3.key_template)
        return fields is not None and fields.get("clinic_id", config.clinic_id) == config.clinic_id

    return check


@dataclass
class Found:
    """What a sync finds before uploading: the scan, the patients, the plan."""

    folders: list
    files: list
    problems: list
    skipped: dict
    patients: Any
    plan: Plan
    stopped: str = ""  # the database check stopped the run


def find(config: ClinicConfig, images: ClinicImages | None = None) -> Found:
    """What a sync of ``config`` finds in PDATA, the database and the resolver (``images``:
    the clinic's catalog rows, for the database check)."""
    folders, _, problems = scan_patient_folders(config.pdata_root)
    files, _, image_problems = scan_images(config.pdata_root, folders)
    problems += image_problems
    engine = make_engine(config.database)
    try:
        lookup = fetch_patients(engine, config.database, sorted({f.patient_id for f in folders}))
        cards = sorted({c for cs in lookup.card_ids.values() for c in cs})
        with ResolverClient(config.resolver, config.clinic_id, None) as resolver:
            resolved = resolver.resolve(cards)
        patients = resolve_patients(lookup.card_ids, resolved.mapping, resolved.failed)
        wanted = patients.wanted(files)
        ids = patients.media_ids(wanted)
        media = fetch_media(engine, config.database, ids)
    finally:
        engine.dispose()
    check = (
        database_check(
            images,
            config.s3.key_template,
            [i for i in ids if i not in media],
            lookup.images_without_patient_row(files),
        )
        if images is not None
        else DatabaseCheck({}, 0, 0)
    )
    stopped = check.problem(
        SafetyLimit.of(config).limit(check.archived),
        qualified(config.database, config.database.media_table),
        qualified(config.database, config.database.patient_table),
    )
    plan_ = build_plan(
        images=wanted,
        patient_guids=patients.guids,
        failed_patients=patients.failed,
        media=media,
        clinic_id=config.clinic_id,
        key_template=config.s3.key_template,
        archived_names=check.media,
        card_ids=lookup.card_ids,
        header_rule=config.database.header_patient_id,
    )
    return Found(folders, files, problems, dict(lookup.skipped), patients, plan_, stopped or "")


def plan(config: ClinicConfig) -> list[PlannedImage]:
    """What a sync of ``config`` would make sure of."""
    return find(config).plan.images


def sync(
    catalog: Catalog, config: ClinicConfig, run_id: str, client: Any = None, full: bool = False
) -> SyncResult:
    """A sync under the clinic's lock (raises ClinicBusyError like the flow refuses);
    ``full``: ``sync --full`` (ctime and inode compared, S3 listed)."""
    client = client or make_client(config.s3, config.transfer)
    if full:
        config = config.model_copy(
            update={"transfer": config.transfer.model_copy(update={"recheck_days": 0})}
        )
    result = SyncResult()
    with catalog.lock(config.clinic_id, "sync", run_id) as lock:
        abort_interrupted_uploads(
            client, config.s3.bucket, "images/", belongs(config), lock.acquired_at
        )
        result.recheck = recheck_content(
            images_of(catalog, config), config.pdata_root, config.transfer.rehash_days, 2
        )
        found = find(config, images_of(catalog, config))
        if found.stopped:
            result.stopped = found.stopped
            return result
        result.planned = found.plan.images
        result.failed = found.plan.failed
        for batch in make_batches(result.planned, config.transfer.batch_size):
            uploader = BatchUploader(
                config,
                client,
                images_of(catalog, config),
                run_id,
                FileCheck(strict=full, reread=result.recheck.changed),
            )
            result.outcomes += uploader.upload_batch(batch)
        if any(o.fatal for o in result.outcomes):
            return result
        view = source_view(
            folders=found.folders,
            images=found.files,
            scan_problems=found.problems,
            patient_skipped=found.skipped,
            patients=found.patients,
            plan=found.plan,
            run_problems=[
                *found.plan.failed,
                *(Problem(o.path, o.reason) for o in result.outcomes if o.status != UPLOADED
                  and o.status != UNCHANGED),
            ],
        )  # fmt: skip
        result.retirement = retire(
            images_of(catalog, config),
            client,
            config.s3.bucket,
            config.clinic_id,
            view,
            mode=config.retire,
            limit=SafetyLimit.of(config),
            flow_run_id=run_id,
        )
    return result


def verify(catalog: Catalog, config: ClinicConfig, run_id: str, client: Any = None) -> Drift:
    client = client or make_client(config.s3, config.transfer)
    with catalog.lock(config.clinic_id, "verify", run_id):
        return verify_catalog(
            images_of(catalog, config), client, config.s3.bucket, belongs(config), run_id
        )
