"""The steps of a sync and a verify, each a plain function over a :class:`RunContext`.

The flows run each as a Prefect task (pdata_sync.tasks.sync wraps these very functions,
one task per step); tests and the model-based test call them directly through
:func:`pdata_sync.pipeline.sync.run_sync`. No step imports Prefect.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pdata_sync.archive.objects import get_bytes
from pdata_sync.archive.s3_client import check_bucket
from pdata_sync.archive.uploads import abort_interrupted_uploads
from pdata_sync.base.errors import ConfigError, describe
from pdata_sync.catalog import now
from pdata_sync.identity.resolver import ResolutionCache, ResolverClient, ResolveResult
from pdata_sync.orthanc.client import Unavailable, warn_if_insecure
from pdata_sync.orthanc.store import O_FAILED, OrthancBatch, OrthancOutcome, verified_in_s3
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.outage import DatabaseCheck, database_check
from pdata_sync.pipeline.plan import PlannedImage
from pdata_sync.pipeline.recheck import Recheck
from pdata_sync.pipeline.recheck import recheck_content as recheck
from pdata_sync.pipeline.report import BatchReport
from pdata_sync.pipeline.retirement import RetireReport, SafetyLimit, SourceView, retire
from pdata_sync.pipeline.triage import FileCheck
from pdata_sync.pipeline.uploader import UNCHANGED, UPLOADED, BatchUploader, Outcome
from pdata_sync.pipeline.verify import Drift, verify_catalog, verify_orthanc
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
    patient_of_path,
    settings_digest,
)
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
    fetch_media_by_patient,
    fetch_patients,
)

# ---- checks before any work ----------------------------------------------------------


def check_source(ctx: RunContext) -> None:
    """Fail fast if PDATA or the database is not usable."""
    check_root(ctx.config.pdata_root)
    check_database(ctx.engine, ctx.config.database)
    ctx.log.info("PDATA share and Sidexis database are readable")


def check_destinations(ctx: RunContext) -> Unavailable | None:
    """Fail fast if the bucket is missing or the credentials cannot reach it. The clinic's
    Orthanc, when it has one, is checked too, but never stops the archive: why it cannot be
    used is returned, and the run syncs S3 without it."""
    check_bucket(ctx.s3, ctx.config.s3.bucket, locked=ctx.config.s3.object_lock is not None)
    ctx.log.info("bucket %s is reachable", ctx.config.s3.bucket)
    if ctx.config.orthanc is None:
        return None
    warn_if_insecure(ctx.config.orthanc, ctx.log)
    try:
        version = ctx.orthanc.check()  # type: ignore[union-attr]
    except ConfigError as exc:
        down = Unavailable.of(exc)
        ctx.log.error("%s; this run stores its images in S3 only", down.reason)
        return down
    ctx.log.info("Orthanc %s at %s is reachable", version, ctx.config.orthanc.url)
    return None


# ---- before the uploads ----------------------------------------------------------------


def abort_interrupted(ctx: RunContext, locked_since: datetime | None = None) -> int:
    """Abort multipart uploads of this clinic that no live run owns: started before this
    run took the clinic's lock (``locked_since``), so by a run that is gone."""
    aborted = abort_interrupted_uploads(
        ctx.s3, ctx.config.s3.bucket, "images/", ctx.belongs, started_before=locked_since
    )
    ctx.log.info("%d interrupted multipart upload(s) aborted", aborted)
    if aborted:
        ctx.log.warning(
            "clinic %s: aborted %d multipart upload(s) left open by an interrupted run",
            ctx.clinic_id,
            aborted,
        )
    return aborted


def recheck_content(ctx: RunContext) -> Recheck:
    """The rolling content check (pdata_sync.pipeline.recheck): re-hash the archived files
    hashed longest ago, 1/rehash_days of them; a file whose bytes changed with its size and
    mtime kept is returned, for this run to read like any changed file."""
    found = recheck(
        ctx.images(),
        ctx.config.pdata_root,
        ctx.config.transfer.rehash_days,
        ctx.config.transfer.cpu_slots(),
    )
    ctx.log.info(
        "clinic %s: %d archived file(s) hashed again (%.1f MB); %d changed in place",
        ctx.clinic_id,
        found.files,
        found.bytes / 1e6,
        len(found.changed),
    )
    if found.changed:
        ctx.log.warning(
            "clinic %s: %d file(s) changed although size and mtime did not: %s",
            ctx.clinic_id,
            len(found.changed),
            ", ".join(sorted(found.changed)[:10]),
        )
    return found


def settings_of(ctx: RunContext) -> str:
    """The digest of the settings that decide what a patient's folder turns into."""
    config = ctx.config
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


def resolve(ctx: RunContext, card_ids: list[str], refresh: bool = False) -> ResolveResult:
    """The resolver's answers for ``card_ids`` through the worker's cache."""
    config = ctx.config
    cache = None
    if config.resolver.cache_ttl_hours > 0:
        path = ctx.state_dir / config.clinic_id / "resolver-cache.json"
        cache = ResolutionCache(path, config.clinic_id, config.resolver.cache_ttl_hours * 3600)
    with ResolverClient(config.resolver, config.clinic_id, cache) as client:
        return client.resolve(card_ids, refresh=refresh)


def detect_changes(ctx: RunContext, requested_full: bool) -> ChangeSet:
    """Full or incremental, and for an incremental run the patients whose folders to read:
    those whose rows in the patient and media tables or whose patientGuids differ from what
    the catalog recorded when their folder was last handled completely (ADR 0010)."""
    config, marks, settings = ctx.config, ctx.marks(), settings_of(ctx)
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
        ctx.log.warning("clinic %s: full run: %s", config.clinic_id, why)
    if why in UNTRACKED:  # no run of this clinic can be incremental: nothing to compare
        ctx.log.info("clinic %s: full run: %s", config.clinic_id, why)
        return ChangeSet(mode=FULL, full_reason=why, digests={}, read=None, settings=settings)
    folders, _, _ = scan_patient_folders(config.pdata_root)
    ids = sorted({f.patient_id for f in folders})
    lookup = fetch_patients(ctx.engine, config.database, ids)
    media = fetch_media_by_patient(ctx.engine, config.database, ids)
    cards = sorted({c for cs in lookup.card_ids.values() for c in cs})
    answers = resolve(ctx, cards)
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
        ctx.log.info("clinic %s: full run: %s", config.clinic_id, why)
    else:
        ctx.log.info(
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


@dataclass
class Scan:
    folders: list[PatientFolder]
    images: list[ImageFile]
    skipped: Counter[str]
    problems: list[Problem]
    # the share has no patient folder at all while the archive holds this clinic's images
    # (an unmounted share): why the run must stop; "" when it need not
    empty_share: str = ""


def empty_share(ctx: RunContext) -> str:
    """Why a share without a single patient folder stops the run, or "" when the catalog
    holds no image of this clinic there either (a new clinic, an empty practice)."""
    archived = ctx.images().archived_count()
    if not archived:
        return ""
    return (
        f"share empty: {ctx.config.pdata_root} has no patient folder, but the archive holds "
        f"{archived} image(s) of this clinic: is the share mounted? Nothing was uploaded "
        "or retired"
    )


def scan_pdata(ctx: RunContext, only: frozenset[int] | None = None) -> Scan:
    """List patient folders and their image files; ``only``: read just these patients'
    folders (an incremental run; the others are not counted)."""
    folders, skipped, problems = scan_patient_folders(ctx.config.pdata_root)
    if not folders and not problems and (why := empty_share(ctx)):
        ctx.log.error("clinic %s: %s", ctx.clinic_id, why)
        return Scan([], [], skipped, [], empty_share=why)
    if only is not None:
        folders = [f for f in folders if f.patient_id in only]
    images, skipped_files, image_problems = scan_images(ctx.config.pdata_root, folders)
    skipped.update(skipped_files)
    problems += image_problems
    ctx.log.info(
        "%d patient folders, %d image files (%d entries skipped, %d unreadable)",
        len(folders),
        len(images),
        sum(skipped.values()),
        len(problems),
    )
    return Scan(folders, images, skipped, problems)


def query_patients(ctx: RunContext, patient_ids: list[int]) -> PatientLookup:
    """CardIds of the listed patients; skipped patients with their reasons."""
    lookup = fetch_patients(ctx.engine, ctx.config.database, patient_ids)
    ctx.log.info(
        "%d of %d patients have CardIds (%d CardIds); %d skipped",
        len(lookup.card_ids),
        len(patient_ids),
        sum(len(cards) for cards in lookup.card_ids.values()),
        len(lookup.skipped),
    )
    return lookup


def resolve_card_ids(ctx: RunContext, card_ids: list[str], refresh: bool = False) -> ResolveResult:
    """Resolve CardIds in batches (cached across runs, transient errors retried);
    ``refresh``: ask for every CardId and renew the cache (a full run)."""
    result = resolve(ctx, card_ids, refresh)
    ctx.log.info(
        "%d of %d CardIds resolved (%d from the cache, %d resolver calls); %d unknown, %d failed",
        len(result.mapping),
        len(card_ids),
        result.from_cache,
        result.calls,
        len(result.unknown),
        len(result.failed),
    )
    return result


@dataclass(frozen=True)
class Media:
    """Media rows by imageId, in one object: Prefect links every element of a task's
    result (one level deep) to its state, which for 100,000 rows cost seconds. ``check``:
    what the database no longer says about archived images."""

    rows: dict[int, MediaRow]
    check: DatabaseCheck


def lookup_media(
    ctx: RunContext, image_ids: list[int], no_patient_row: list[int] | None = None
) -> Media:
    """Media rows (name, deleted flag) of the images to upload, and which archived images
    lost their media row or (``no_patient_row``: images of patients the patient table no
    longer has) their patient row."""
    rows = fetch_media(ctx.engine, ctx.config.database, image_ids)
    check = database_check(
        ctx.images(),
        ctx.config.s3.key_template,
        [i for i in image_ids if i not in rows],
        no_patient_row or [],
    )
    ctx.log.info("%d media rows found for %d images", len(rows), len(image_ids))
    if check.media or check.patient_images:
        ctx.log.warning(
            "clinic %s: %d archived image(s) without their media row, %d without their patient row",
            ctx.clinic_id,
            len(check.media),
            check.patient_images,
        )
    return Media(rows, check)


# ---- the uploads -----------------------------------------------------------------------


def store_in_orthanc(
    ctx: RunContext,
    outcomes: list[Outcome],
    retry_rejected: bool = False,
    down: Unavailable | None = None,
) -> list[OrthancOutcome]:
    """Send the batch's images verified in S3 to the clinic's Orthanc (``down``: why it
    cannot be used this run; what it is recorded to hold is still reported unchanged, the
    rest failed without a call)."""
    config = ctx.config
    assert config.orthanc is not None
    client = ctx.s3
    in_s3 = [o.key for o in outcomes if o.status in (UPLOADED, UNCHANGED)]
    try:
        verified = verified_in_s3(ctx.images(), in_s3)
    except Exception as exc:  # noqa: BLE001 - nothing sent without the catalog's word
        reason = f"catalog: cannot read the verified rows: {describe(exc)}"
        return [OrthancOutcome(o.key, o.path, O_FAILED, reason) for o in outcomes if o.key in in_s3]
    batch = OrthancBatch(
        None if down else ctx.orthanc,
        ctx.orthanc_records(),
        Path(config.pdata_root),
        lambda key: get_bytes(client, config.s3.bucket, key)[0],
        ctx.run_id,
        down=down.reason if down else None,
    )
    return batch.store(verified, config.orthanc.concurrency, retry_rejected)


def upload_batch(
    ctx: RunContext,
    batch: list[PlannedImage],
    full_run: bool = False,
    orthanc_down: Unavailable | None = None,
    reread: frozenset[str] = frozenset(),
) -> BatchReport:
    """Upload one batch concurrently on one shared client; its counts and problems as data.

    Every upload is recorded in the catalog and verified against what S3 reports; the
    verified images then go to Orthanc when the clinic has one (a full run also sends again
    what Orthanc rejected before; ``orthanc_down``: Orthanc cannot be used this run). A full
    run compares each file's ctime and inode too; ``reread``: paths the rolling content
    check found changed, read whatever the catalog says."""
    check = FileCheck(strict=full_run, reread=reread)
    uploader = BatchUploader(
        ctx.config, ctx.s3, ctx.images(), ctx.run_id, check, ctx.deadline, ctx.cpu
    )
    outcomes = uploader.upload_batch(batch)
    in_orthanc = None
    if ctx.config.orthanc is not None and not uploader.fatal:
        in_orthanc = store_in_orthanc(ctx, outcomes, full_run, orthanc_down)
    return BatchReport.of(outcomes, in_orthanc)


# ---- after the uploads -----------------------------------------------------------------


def retire_objects(ctx: RunContext, view: SourceView) -> RetireReport:
    """Move objects that no longer belong to ``retired/`` (or, with ``retire: keep``, only
    report them), unless more would go than the safety limit allows (ADR 0007)."""
    report = retire(
        ctx.images(),
        ctx.s3,
        ctx.config.s3.bucket,
        ctx.clinic_id,
        view,
        mode=ctx.config.retire,
        limit=SafetyLimit.of(ctx.config),
        flow_run_id=ctx.run_id,
    )
    if report.tripped:
        ctx.log.error("clinic %s: %s", ctx.clinic_id, report.tripped)
    else:
        ctx.log.info(
            "clinic %s: %d object(s) no longer belong; %s",
            ctx.clinic_id,
            len(report.candidates),
            f"{len(report.retired)} moved to retired/"
            if ctx.config.retire == "move"
            else "kept (retire: keep)",
        )
    return report


def record_changes(
    ctx: RunContext, changes: ChangeSet, record: Record, started_at: datetime
) -> None:
    """Store what this run finished, in one transaction (nothing when the run stopped)."""
    ctx.marks().record(
        record.keep,
        record.forget,
        full_started_at=started_at if record.full else None,
        settings=changes.settings,
        flow_run_id=ctx.run_id,
    )
    ctx.log.info(
        "clinic %s: %d patient(s) recorded as done, %d to read again next run",
        ctx.clinic_id,
        len(record.keep),
        len(record.forget),
    )


# ---- verify ----------------------------------------------------------------------------


def verify_clinic(ctx: RunContext) -> Drift:
    """S3 (and Orthanc) against the catalog, changing nothing in S3; what differs is
    recorded as drifted, and its patients are read again by the next incremental run."""
    # an audit starts with the catalog's own file: SQLite's thorough check (0.4 s for
    # 100,000 rows; a sync runs the quick one)
    ctx.catalog.check_integrity(thorough=True)
    check_bucket(ctx.s3, ctx.config.s3.bucket, locked=ctx.config.s3.object_lock is not None)
    orthanc = ctx.orthanc
    if orthanc is not None:
        warn_if_insecure(ctx.config.orthanc, ctx.log)
        orthanc.check()  # unreachable or refused: before any work
    drift = verify_catalog(
        ctx.images(),
        ctx.s3,
        ctx.config.s3.bucket,
        ctx.belongs,
        ctx.run_id,
        ctx.config.s3.server_side_encryption,
    )
    if orthanc is not None:
        verify_orthanc(ctx.orthanc_records(), orthanc, drift, orthanc.cfg.concurrency)
    # an incremental sync must read these patients' folders next, not wait for a full run
    differing = {
        *drift.missing,
        *(c["key"] for c in drift.changed + drift.unencrypted),
        *drift.orthanc_missing,
    }
    if differing:
        paths = {row.key: row.rel_path for row in ctx.images().rows()}
        ctx.marks().forget(
            pid for key in differing if (pid := patient_of_path(paths.get(key, ""))) is not None
        )
    return drift
