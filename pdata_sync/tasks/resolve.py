"""Task that maps CardIds to patientGuids through the platform's resolver."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pdata_sync.base.config import ClinicConfig
from pdata_sync.identity.resolver import ResolutionCache, ResolverClient, ResolveResult

STATE_DIR_ENV = "PDATA_SYNC_STATE_DIR"


def state_dir(config: ClinicConfig) -> Path:
    """Where this worker keeps state between runs (the resolver cache)."""
    if config.transfer.state_dir:
        return Path(config.transfer.state_dir)
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    return Path.home() / ".local" / "state" / "pdata-sync"


@task(name="resolve-card-ids", cache_policy=NO_CACHE, persist_result=False)
def resolve_card_ids(
    config: ClinicConfig, card_ids: list[str], refresh: bool = False
) -> ResolveResult:
    """Resolve CardIds in batches (cached across runs, transient errors retried);
    ``refresh``: ask for every CardId and renew the cache (a full run)."""
    result = resolve(config, card_ids, refresh)
    get_run_logger().info(
        "%d of %d CardIds resolved (%d from the cache, %d resolver calls); %d unknown, %d failed",
        len(result.mapping),
        len(card_ids),
        result.from_cache,
        result.calls,
        len(result.unknown),
        len(result.failed),
    )
    return result


def resolve(config: ClinicConfig, card_ids: list[str], refresh: bool = False) -> ResolveResult:
    """The resolver's answers for ``card_ids`` through the worker's cache (no task run)."""
    cache = None
    if config.resolver.cache_ttl_hours > 0:
        path = state_dir(config) / config.clinic_id / "resolver-cache.json"
        cache = ResolutionCache(path, config.clinic_id, config.resolver.cache_ttl_hours * 3600)
    with ResolverClient(config.resolver, config.clinic_id, cache) as client:
        return client.resolve(card_ids, refresh=refresh)
