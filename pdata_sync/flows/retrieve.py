"""Flow ``retrieve-patient-images``: list (and optionally presign or download) one
patient's images knowing only the patientGuid (docs/product-rules.md §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed
from pydantic import Field

import pdata_sync.flows._prefect_engine  # noqa: F401 - a flow run ends when its work is done
from pdata_sync.archive.retrieval import (
    DEFAULT_PRESIGN_SECONDS,
    list_patient_images,
    patient_manifest,
    validate_expiry,
    validate_guid,
    write_manifest_file,
)
from pdata_sync.base.config import OrthancConfig, S3Config
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.orthanc.client import warn_if_insecure
from pdata_sync.pipeline.naming import retrieval_run_name
from pdata_sync.pipeline.previews import write_previews
from pdata_sync.tasks.credentials import orthanc_client, s3_client


@task(name="list-patient-images", cache_policy=NO_CACHE, persist_result=False)
def list_images_task(
    s3: S3Config, patient_guid: str, presign_seconds: int | None, download_dir: str | None
) -> list[dict[str, Any]]:
    client = s3_client(s3)
    return list_patient_images(
        client, s3, patient_guid, presign_seconds=presign_seconds, download_dir=download_dir
    )


@task(name="write-viewer-manifest", cache_policy=NO_CACHE, persist_result=False)
def manifest_task(
    s3: S3Config, patient_guid: str, presign_seconds: int, manifest_path: str
) -> list[dict[str, str]]:
    """Write OHIF's manifest for the patient; return the objects left out of it."""
    manifest, left_out = patient_manifest(s3_client(s3), s3, patient_guid, presign_seconds)
    write_manifest_file(manifest_path, manifest)
    return left_out


@task(name="write-previews", cache_policy=NO_CACHE, persist_result=False)
def previews_task(
    s3: S3Config, patient_guid: str, previews_dir: str, orthanc: OrthancConfig | None
) -> list[dict[str, str]]:
    """One PNG per image: Orthanc's when the clinic has one, else drawn here."""
    client = orthanc_client(orthanc) if orthanc is not None else None
    warn_if_insecure(orthanc, get_run_logger())
    return write_previews(s3_client(s3), s3, patient_guid, previews_dir, client)


def links_markdown(patient_guid: str, images: list[dict[str, Any]], expires: datetime) -> str:
    """The run's links for a person in the UI: one per image, by image id and Sidexis name
    (already safe to show), and when they stop working."""
    lines = [
        f"# Links to the images of patient {patient_guid}",
        "",
        f"Valid until **{expires:%Y-%m-%d %H:%M:%S} UTC**. Each link downloads one DICOM "
        "file without any other credential: do not forward them.",
        "",
        "| image id | name | link |",
        "|---|---|---|",
    ]
    for image in images:
        name = str(image.get("name") or "").replace("|", "/").replace("[", "(").replace("]", ")")
        lines.append(f"| {image.get('image_id')} | {name} | [download]({image['url']}) |")
    return "\n".join(lines) + "\n"


def found_images_table(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The artifact's rows: what was found, never a URL (presigned URLs are bearer
    credentials) nor a local path."""
    columns = ("key", "image_id", "name", "size", "last_modified")
    return [{column: image.get(column) for column in columns} for image in images]


# The run form in the Prefect UI is built from these (Prefect titles a parameter by its
# name unless the field's JSON schema says otherwise).
_GUID = Field(
    ...,
    description="The patient's GUID on the platform: a lower-case UUID such as "
    "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71. Only images/{patientGuid}/ is read.",
    json_schema_extra={"title": "patientGuid (UUID)"},
)
_S3 = Field(
    ...,
    description="Bucket, region and, for S3-compatible servers, endpoint URL of the archive. "
    "Credentials come from the AwsCredentials block named here, else the worker's "
    "environment.",
    json_schema_extra={"title": "S3 archive"},
)
_PRESIGN = Field(
    None,
    description="Add a presigned GET URL per image, valid this many seconds (1 to 604800 "
    "= 7 days). Empty: no URLs. The links are listed in a markdown artifact of this run "
    "(its Artifacts tab), where they work until they expire; anyone holding one can "
    "download that image until then, so keep it short (e.g. 900).",
    json_schema_extra={"title": "Presigned URL lifetime (seconds)"},
)
_DOWNLOAD = Field(
    None,
    description="Download every image into this folder on the worker. Empty: list only.",
    json_schema_extra={"title": "Download folder on the worker"},
)
_MANIFEST = Field(
    None,
    description="Write an OHIF DICOM JSON manifest of the patient's images to this file on "
    "the worker (readable by its owner only: it holds presigned URLs). The URLs last as "
    "long as the presigned URL lifetime, 3600 s if that is empty.",
    json_schema_extra={"title": "Viewer manifest file on the worker"},
)
_PREVIEWS = Field(
    None,
    description="Write one PNG preview per image into this folder on the worker (readable by "
    "its owner only): Orthanc's preview when an Orthanc is given, else drawn on the worker.",
    json_schema_extra={"title": "Preview folder on the worker"},
)
_ORTHANC = Field(
    None,
    description="The clinic's Orthanc, for previews (its password from the Secret block "
    "named here, else PDATA_SYNC_ORTHANC_PASSWORD on the worker). Empty: previews are drawn "
    "on the worker.",
    json_schema_extra={"title": "Orthanc (previews)"},
)


def _run_name() -> str:
    """``retrieve-{first 8 of the guid}-{UTC time}`` (pdata_sync.pipeline.naming)."""
    return retrieval_run_name(
        flow_run.parameters.get("patient_guid"), flow_run.scheduled_start_time
    )


@flow(name="retrieve-patient-images", flow_run_name=_run_name, persist_result=False)
def retrieve_patient_images(
    patient_guid: str = _GUID,
    s3: S3Config = _S3,
    presign_seconds: int | None = _PRESIGN,
    download_dir: str | None = _DOWNLOAD,
    manifest_path: str | None = _MANIFEST,
    previews_dir: str | None = _PREVIEWS,
    orthanc: OrthancConfig | None = _ORTHANC,
) -> Any:
    """List every image under ``images/{patient_guid}/``; presign, download, write a viewer
    manifest and/or PNG previews on request.

    A patientGuid that is not a canonical UUID is refused before S3 is called.
    """
    protect_logs()
    validate_guid(patient_guid)
    if presign_seconds is not None:
        validate_expiry(presign_seconds)
    images = list_images_task(s3, patient_guid, presign_seconds, download_dir)
    logger = get_run_logger()
    logger.info("patient %s: %d images listed", patient_guid, len(images))
    if manifest_path is not None:
        left_out = manifest_task(
            s3, patient_guid, presign_seconds or DEFAULT_PRESIGN_SECONDS, manifest_path
        )
        reasons = {item["key"]: item["reason"] for item in left_out}
        for image in images:
            image["in_manifest"] = image["key"] not in reasons
            if image["key"] in reasons:
                image["manifest_problem"] = reasons[image["key"]]
        for key, reason in reasons.items():
            logger.warning("left out of the viewer manifest: %s (%s)", key, reason)
    if previews_dir is not None:
        previews = {p["key"]: p for p in previews_task(s3, patient_guid, previews_dir, orthanc)}
        for image in images:
            preview = previews.get(image["key"], {})
            if preview.get("file"):
                image["preview"] = preview["file"]
                image["preview_source"] = preview["source"]
            elif preview:
                image["preview_problem"] = preview.get("problem", "")
            if preview.get("fallback"):
                image["preview_fallback"] = preview["fallback"]
        sources = sorted(p.get("source", "") for p in previews.values() if p.get("file"))
        logger.info(
            "patient %s: %d previews (%d from Orthanc, %d drawn here), %d not made",
            patient_guid,
            len(sources),
            sources.count("orthanc"),
            sources.count("local"),
            len(previews) - len(sources),
        )
    create_table_artifact(
        key="retrieve-patient-images",
        table=found_images_table(images)
        or [{"key": None, "image_id": None, "name": None, "size": 0, "last_modified": None}],
        description=(
            f"Images of patient {patient_guid} found in s3://{s3.bucket}/"
            f"{'; presigned' if presign_seconds is not None else ''}"
            f"{'; downloaded on the worker' if download_dir is not None else ''}"
            f"{'; viewer manifest written on the worker' if manifest_path is not None else ''}"
            f"{'; previews written on the worker' if previews_dir is not None else ''}"
            " (no URLs in this table: presigned links are in the run's links artifact)"
        ),
    )
    linked = [i for i in images if i.get("url")]
    if presign_seconds is not None and linked:
        # Not keyed: the links belong to this run only, not to a collection the UI lists.
        # The run history keeps the artifact; the links in it stop working at `expires`.
        expires = datetime.now(UTC) + timedelta(seconds=presign_seconds)
        create_markdown_artifact(
            markdown=links_markdown(patient_guid, linked, expires),
            description=f"Presigned links to {len(linked)} image(s) of patient {patient_guid}, "
            f"valid until {expires:%Y-%m-%d %H:%M} UTC",
        )
    refused = [i for i in images if i.get("download_problem")]
    for image in refused:
        logger.warning("not downloaded: %s (%s)", image["key"], image["download_problem"])
    if refused:  # nothing was overwritten; the run says what it did not write
        return Failed(message=f"{len(refused)} image(s) not downloaded", data=images)
    return images
