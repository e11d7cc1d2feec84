"""Tasks on the destination side: the bucket (and Orthanc) check, and the upload of one
batch of images to S3, then to Orthanc when the clinic has one."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pdata_sync.archive.s3_store import check_bucket, get_bytes
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import ConfigError, describe
from pdata_sync.orthanc.client import Unavailable
from pdata_sync.orthanc.store import O_FAILED, OrthancBatch, OrthancOutcome, verified_in_s3
from pdata_sync.pipeline.plan import PlannedImage
from pdata_sync.pipeline.report import BatchReport
from pdata_sync.pipeline.triage import FileCheck
from pdata_sync.pipeline.uploader import UNCHANGED, UPLOADED, BatchUploader, Outcome
from pdata_sync.tasks.catalog import clinic_images, open_catalog
from pdata_sync.tasks.credentials import orthanc_client, s3_client, warn_if_insecure


@task(name="check-bucket", cache_policy=NO_CACHE, persist_result=False)
def check_destination(config: ClinicConfig) -> Unavailable | None:
    """Fail fast if the bucket is missing or the credentials cannot reach it. The clinic's
    Orthanc, when it has one, is checked too, but never stops the archive: why it cannot be
    used is returned, and the run syncs S3 without it."""
    check_bucket(s3_client(config.s3, config.transfer), config.s3.bucket)
    logger = get_run_logger()
    logger.info("bucket %s is reachable", config.s3.bucket)
    if config.orthanc is None:
        return None
    warn_if_insecure(config.orthanc, logger)
    try:
        version = orthanc_client(config.orthanc).check()
    except ConfigError as exc:
        down = Unavailable.of(exc)
        logger.error("%s; this run stores its images in S3 only", down.reason)
        return down
    logger.info("Orthanc %s at %s is reachable", version, config.orthanc.url)
    return None


def store_in_orthanc(
    config: ClinicConfig,
    outcomes: list[Outcome],
    retry_rejected: bool = False,
    down: Unavailable | None = None,
) -> list[OrthancOutcome]:
    """Send the batch's images verified in S3 to the clinic's Orthanc (``down``: why it
    cannot be used this run; what it is recorded to hold is still reported unchanged, the
    rest failed without a call)."""
    assert config.orthanc is not None
    client = s3_client(config.s3, config.transfer)
    images = clinic_images(config)
    in_s3 = [o.key for o in outcomes if o.status in (UPLOADED, UNCHANGED)]
    try:
        verified = verified_in_s3(images, in_s3)
    except Exception as exc:  # noqa: BLE001 - nothing sent without the catalog's word
        reason = f"catalog: cannot read the verified rows: {describe(exc)}"
        return [OrthancOutcome(o.key, o.path, O_FAILED, reason) for o in outcomes if o.key in in_s3]
    batch = OrthancBatch(
        None if down else orthanc_client(config.orthanc),
        open_catalog(config).orthanc(config.clinic_id, config.orthanc.url),
        Path(config.pdata_root),
        lambda key: get_bytes(client, config.s3.bucket, key)[0],
        flow_run.get_id(),
        down=down.reason if down else None,
    )
    return batch.store(verified, config.orthanc.concurrency, retry_rejected)


@task(name="upload-batch", cache_policy=NO_CACHE, persist_result=False)
def upload_batch(
    config: ClinicConfig,
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
    client = s3_client(config.s3, config.transfer)
    check = FileCheck(strict=full_run, reread=reread)
    uploader = BatchUploader(config, client, clinic_images(config), flow_run.get_id(), check)
    outcomes = uploader.upload_batch(batch)
    in_orthanc = None
    if config.orthanc is not None and not uploader.fatal:
        in_orthanc = store_in_orthanc(config, outcomes, full_run, orthanc_down)
    return BatchReport.of(outcomes, in_orthanc)
