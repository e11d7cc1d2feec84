"""Flow ``retrieve-patient-images``: list (and optionally presign or download) one
patient's images knowing only the patientGuid (SPEC section 3)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pdata_sync.config import S3Config
from pdata_sync.logsafety import protect_logs
from pdata_sync.retrieval import list_patient_images, validate_expiry, validate_guid
from tasks.credentials import s3_client


@task(name="list-patient-images", cache_policy=NO_CACHE, persist_result=False)
def list_images_task(
    s3: S3Config, patient_guid: str, presign_seconds: int | None, download_dir: str | None
) -> list[dict[str, Any]]:
    client = s3_client(s3)
    return list_patient_images(
        client, s3, patient_guid, presign_seconds=presign_seconds, download_dir=download_dir
    )


@flow(name="retrieve-patient-images", persist_result=False)
def retrieve_patient_images(
    patient_guid: str,
    s3: S3Config,
    presign_seconds: int | None = None,
    download_dir: str | None = None,
) -> list[dict[str, Any]]:
    """List every image under ``images/{patient_guid}/``; presign and/or download on request.

    A patientGuid that is not a canonical UUID is refused before S3 is called.
    """
    protect_logs()
    validate_guid(patient_guid)
    if presign_seconds is not None:
        validate_expiry(presign_seconds)
    images = list_images_task(s3, patient_guid, presign_seconds, download_dir)
    get_run_logger().info("patient %s: %d images listed", patient_guid, len(images))
    create_table_artifact(
        key="retrieve-patient-images",
        table=[
            {
                "patient_guid": patient_guid,
                "images": len(images),
                "presigned": presign_seconds is not None,
                "downloaded": download_dir is not None,
            }
        ],
        description="What the retrieval listed (no URLs: they are bearer credentials)",
    )
    return images
