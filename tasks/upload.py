"""Tasks on the S3 side: the bucket check and the upload of one batch of images."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pdata_sync.config import ClinicConfig
from pdata_sync.plan import PlannedImage
from pdata_sync.report import BatchReport
from pdata_sync.s3_store import check_bucket
from pdata_sync.uploader import BatchUploader

from .catalog import clinic_images
from .credentials import s3_client


@task(name="check-bucket", cache_policy=NO_CACHE, persist_result=False)
def check_destination(config: ClinicConfig) -> None:
    """Fail fast if the bucket is missing or the credentials cannot reach it."""
    check_bucket(s3_client(config.s3, config.transfer), config.s3.bucket)
    get_run_logger().info("bucket %s is reachable", config.s3.bucket)


@task(name="upload-batch", cache_policy=NO_CACHE, persist_result=False)
def upload_batch(config: ClinicConfig, batch: list[PlannedImage]) -> BatchReport:
    """Upload one batch concurrently on one shared client; its counts and problems as data.

    Every upload is recorded in the catalog and verified against what S3 reports."""
    client = s3_client(config.s3, config.transfer)
    uploader = BatchUploader(config, client, clinic_images(config), flow_run.get_id())
    return BatchReport.of(uploader.upload_batch(batch))
