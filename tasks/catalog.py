"""The image catalog of a run: opened (and migrated) once per worker process, and the task
that prepares it before any upload (schema, interrupted multipart uploads)."""

from __future__ import annotations

import threading

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pdata_sync.catalog import Catalog, default_catalog_url
from pdata_sync.config import ClinicConfig
from pdata_sync.keys import parse_key
from pdata_sync.s3_store import abort_interrupted_uploads

from .credentials import catalog_password, s3_client
from .resolve import state_dir

_OPEN: dict[str, Catalog] = {}
_LOCK = threading.Lock()


def catalog_url(config: ClinicConfig) -> str:
    """The configured catalog URL, or the SQLite file in the worker's state folder."""
    return config.catalog.url or default_catalog_url(state_dir(config))


def open_catalog(config: ClinicConfig) -> Catalog:
    """The clinic's catalog, shared by the tasks of this process (schema migrated once)."""
    url = catalog_url(config)
    with _LOCK:
        if url not in _OPEN:
            _OPEN[url] = Catalog.open(url, catalog_password(config.catalog))
        return _OPEN[url]


def belongs_to_clinic(config: ClinicConfig):
    """A predicate: is this key one this clinic's syncs write?"""

    def belongs(key: str) -> bool:
        fields = parse_key(key, config.s3.key_template)
        return fields is not None and fields.get("clinic_id", config.clinic_id) == config.clinic_id

    return belongs


@task(name="prepare-catalog", cache_policy=NO_CACHE, persist_result=False)
def prepare_catalog(config: ClinicConfig) -> int:
    """Open (create or upgrade) the catalog, and abort multipart uploads that an earlier,
    interrupted run of this clinic left open. Returns how many were aborted."""
    open_catalog(config)
    client = s3_client(config.s3, config.transfer)
    aborted = abort_interrupted_uploads(
        client, config.s3.bucket, "images/", belongs_to_clinic(config)
    )
    get_run_logger().info("catalog ready; %d interrupted multipart upload(s) aborted", aborted)
    if aborted:
        get_run_logger().warning(
            "clinic %s: aborted %d multipart upload(s) left open by an interrupted run",
            config.clinic_id,
            aborted,
        )
    return aborted
