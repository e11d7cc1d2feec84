"""The image catalog of a run: opened (and migrated) once per worker process, the clinic's
lock every sync and verify holds, and the task that prepares the catalog before any upload
(schema, multipart uploads left open by an interrupted run)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import datetime

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from pdata_sync.archive.s3_store import abort_interrupted_uploads
from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import describe
from pdata_sync.catalog import Catalog, ClinicImages, default_catalog_url, destination_of
from pdata_sync.identity.keys import parse_key
from pdata_sync.pipeline.recheck import Recheck
from pdata_sync.pipeline.recheck import recheck_content as recheck
from pdata_sync.tasks.credentials import catalog_password, s3_client
from pdata_sync.tasks.resolve import state_dir

_OPEN: dict[str, Catalog] = {}
_LOCK = threading.Lock()


def catalog_url(config: ClinicConfig) -> str:
    """The configured catalog URL, or the SQLite file in the worker's state folder."""
    return config.catalog.url or default_catalog_url(state_dir(config))


def open_catalog(config: ClinicConfig, new: bool = False) -> Catalog:
    """The clinic's catalog, shared by the tasks of this process (checked and migrated
    once). ``new``: set an existing SQLite catalog aside and start a new one (sync
    --new-catalog; a run asks for it before any task opens the catalog)."""
    url = catalog_url(config)
    with _LOCK:
        if new and url in _OPEN:
            _OPEN.pop(url).close()
        if url not in _OPEN:
            _OPEN[url] = Catalog.open(url, catalog_password(config.catalog), new=new)
        return _OPEN[url]


def clinic_images(config: ClinicConfig) -> ClinicImages:
    """The clinic's rows in the configured destination (endpoint + bucket)."""
    destination = destination_of(config.s3.endpoint_url, config.s3.bucket)
    return open_catalog(config).images(config.clinic_id, destination)


def clinic_limit_name(clinic_id: str) -> str:
    """The Prefect global concurrency limit a clinic's sync and verify deployments share."""
    return f"pdata-sync-clinic-{clinic_id}"


@contextlib.contextmanager
def _deployment_slot(clinic_id: str) -> Iterator[None]:
    """For a deployment run, hold the clinic's one slot of its Prefect concurrency limit
    (created with limit 1 on first use): a scheduled verify that meets the nightly sync waits
    for it instead of failing on the catalog lock. CLI runs do not wait: the catalog lock
    refuses them at once, which is what a person at a terminal wants."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        yield
        return
    name = clinic_limit_name(clinic_id)
    with get_client(sync_client=True) as client:
        # Look before creating: the server logs a traceback (a UNIQUE constraint) for every
        # create of a limit that exists, i.e. on every run after the clinic's first.
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run was quicker
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    get_run_logger().info("clinic %s: waiting for concurrency limit %r", clinic_id, name)
    with concurrency(name, occupy=1, strict=True):
        get_run_logger().info("clinic %s: holding concurrency limit %r", clinic_id, name)
        yield


@contextlib.contextmanager
def clinic_lock(config: ClinicConfig, purpose: str, flow_run_id: str | None) -> Iterator[object]:
    """Hold the clinic's lock (or raise ClinicBusyError naming the holder); a deployment
    run first waits for the clinic's shared concurrency slot."""
    catalog = open_catalog(config)
    with (
        _deployment_slot(config.clinic_id),
        catalog.lock(config.clinic_id, purpose, flow_run_id) as lock,
    ):
        if lock.taken_over is not None:
            get_run_logger().warning(
                "clinic %s: took over the lock of a run that is gone (%s)",
                config.clinic_id,
                lock.taken_over.describe(),
            )
        try:
            yield lock
        finally:  # the catalog file alone holds what this run recorded
            try:
                catalog.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the log keeps it; a later run copies it
                get_run_logger().warning("catalog: checkpoint not written: %s", describe(exc))


def belongs_to_clinic(config: ClinicConfig):
    """A predicate: is this key one this clinic's syncs write?"""

    def belongs(key: str) -> bool:
        fields = parse_key(key, config.s3.key_template)
        return fields is not None and fields.get("clinic_id", config.clinic_id) == config.clinic_id

    return belongs


@task(name="prepare-catalog", cache_policy=NO_CACHE, persist_result=False)
def prepare_catalog(config: ClinicConfig, locked_since: datetime | None = None) -> int:
    """Abort multipart uploads of this clinic that no live run owns: started before this
    run took the clinic's lock (``locked_since``), so by a run that is gone. Returns how
    many were aborted."""
    client = s3_client(config.s3, config.transfer)
    aborted = abort_interrupted_uploads(
        client,
        config.s3.bucket,
        "images/",
        belongs_to_clinic(config),
        started_before=locked_since,
    )
    get_run_logger().info("catalog ready; %d interrupted multipart upload(s) aborted", aborted)
    if aborted:
        get_run_logger().warning(
            "clinic %s: aborted %d multipart upload(s) left open by an interrupted run",
            config.clinic_id,
            aborted,
        )
    return aborted


@task(name="recheck-content", cache_policy=NO_CACHE, persist_result=False)
def recheck_content(config: ClinicConfig) -> Recheck:
    """The rolling content check (pdata_sync.pipeline.recheck): re-hash the archived files hashed
    longest ago, 1/rehash_days of them; a file whose bytes changed with its size and mtime
    kept is returned, for this run to read like any changed file."""
    found = recheck(
        clinic_images(config),
        config.pdata_root,
        config.transfer.rehash_days,
        max(2, os.cpu_count() or 1),
    )
    logger = get_run_logger()
    logger.info(
        "clinic %s: %d archived file(s) hashed again (%.1f MB); %d changed in place",
        config.clinic_id,
        found.files,
        found.bytes / 1e6,
        len(found.changed),
    )
    if found.changed:
        logger.warning(
            "clinic %s: %d file(s) changed although size and mtime did not: %s",
            config.clinic_id,
            len(found.changed),
            ", ".join(sorted(found.changed)[:10]),
        )
    return found
