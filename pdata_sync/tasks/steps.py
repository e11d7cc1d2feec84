"""The pipeline's steps as Prefect tasks: each task is the step function itself
(pdata_sync.pipeline.steps), named as the run history shows it; and the clinic's shared
concurrency slot that deployment runs hold around its lock; the runner that runs a
pipeline's sequence (pdata_sync.pipeline.runs) as these tasks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import as_completed
from prefect.tasks import Task
from prefect.utilities.annotations import quote

from pdata_sync.pipeline import steps
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.runs import Runner

# step -> its task run's name (docs/adr/0002-task-granularity.md)
NAMES: dict[Callable[..., Any], str] = {
    steps.check_source: "check-source",
    steps.check_destinations: "check-destinations",
    steps.abort_interrupted: "abort-interrupted-uploads",
    steps.detect_changes: "detect-changes",
    steps.recheck_content: "recheck-content",
    steps.scan_pdata: "scan-pdata",
    steps.query_patients: "query-patients",
    steps.resolve_card_ids: "resolve-card-ids",
    steps.lookup_media: "lookup-media",
    steps.upload_batch: "upload-batch",
    steps.retire_objects: "retire-objects",
    steps.record_changes: "record-changes",
    steps.verify_clinic: "verify-catalog",
}


def as_tasks(names: dict[Callable[..., Any], str]) -> dict[Callable[..., Any], Task[..., Any]]:
    """Each step as a Prefect task of that name (no cache, no persisted result)."""
    return {
        step: task(name=name, cache_policy=NO_CACHE, persist_result=False)(step)
        for step, name in names.items()
    }


TASKS = as_tasks(NAMES)


def clinic_limit_name(clinic_id: str) -> str:
    """The Prefect global concurrency limit a clinic's sync and verify deployments share."""
    return f"pdata-sync-clinic-{clinic_id}"


@contextlib.contextmanager
def deployment_slot(clinic_id: str) -> Iterator[None]:
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
        try:
            yield
        finally:  # logged before the slot goes back: the next holder's line comes after it
            get_run_logger().info("clinic %s: releasing concurrency limit %r", clinic_id, name)


class PrefectRunner(Runner):
    """Runs each step as its Prefect task, the upload batches as submitted task runs on the
    flow's task runner. Arguments go in ``quote()``: they hold no futures, and Prefect would
    otherwise walk every element of every list for dependency tracking (40% of a
    100,000-image no-change run's CPU). ``tasks``: the steps it may run (the sync's and
    verify's by default; the research export passes its own)."""

    def __init__(self, tasks: dict[Callable[..., Any], Task[..., Any]] = TASKS) -> None:
        self.tasks = tasks

    def call(self, step: Callable[..., Any], *args: Any) -> Any:
        return self.tasks[step](*(quote(a) for a in args))

    def submit(self, step: Callable[..., Any], name: str, *args: Any) -> Any:
        task_of_step = self.tasks[step].with_options(task_run_name=name)
        return task_of_step.submit(*(quote(a) for a in args))

    def first_done(self, futures: list[Any]) -> Any:
        return next(as_completed(futures))

    def slot(self, ctx: RunContext) -> contextlib.AbstractContextManager[None]:
        return deployment_slot(ctx.clinic_id)
