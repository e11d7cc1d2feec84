"""The image catalog: every object pdata-sync put in S3, its source and its proof.

One row per object per destination (clinic id + endpoint and bucket + key), grouped into
series and studies by the DICOM UIDs. Rows move through the states and named transitions of
:mod:`.states` (docs/adr/0006-image-row-state-machine.md): *pending* before an upload,
*uploaded* when S3 accepted the body, *verified* only once S3 reported back the size and
checksum of what it stores and they matched (docs/adr/0004), *drifted* when a listing later
showed something else (docs/adr/0005), *retired* once moved out of ``images/`` because it
no longer belongs (docs/adr/0007). A source that changes keeps its history
(``image_history``); every state change is an ``image_events`` row with its flow run. What
a second destination, Orthanc, holds is in ``orthanc_instances`` (:mod:`.orthanc`).

SQLite (default, one file per worker) or PostgreSQL; when the catalog is opened, a new one is
created from :mod:`.schema` at the newest revision and an older one is upgraded by Alembic
migrations (``pdata_sync/catalog/migrations``).

Modules: :mod:`.schema` (tables), :mod:`.database` (connecting, migrating), :mod:`.series`
(studies and series), :mod:`.states` (the lifecycle), :mod:`.images` (transitions and
queries of one clinic's rows in one destination), :mod:`.lock` (one run per clinic),
:mod:`.marks` (what incremental runs compare against).
"""

from __future__ import annotations

import logging

from pdata_sync.catalog.database import (
    Database,
    check_sqlite_file,
    default_catalog_url,
    set_aside,
    sqlite_path,
)
from pdata_sync.catalog.destination import destination_of
from pdata_sync.catalog.images import INVENTORY_COLUMNS, ClinicImages
from pdata_sync.catalog.lock import ClinicLock, Holder
from pdata_sync.catalog.marks import SyncMarks
from pdata_sync.catalog.orthanc import OrthancRecords, OrthancRow
from pdata_sync.catalog.records import (
    CLOCK_TOLERANCE,
    CatalogRow,
    PendingItem,
    Settled,
    SourceInfo,
    in_the_future,
    now,
)
from pdata_sync.catalog.schema import (
    HEAD_REVISION,
    LEGACY_DESTINATION,
    MIGRATIONS,
    VERSION_TABLE,
    image_events,
    image_history,
    images,
    metadata,
    orthanc_instances,
    series,
    studies,
)
from pdata_sync.catalog.series import SeriesRegistry
from pdata_sync.catalog.states import (
    ACCEPT,
    ACCEPTED,
    CONFIRM,
    DRIFTED,
    MATCH,
    PENDING,
    RETIRED,
    STATES,
    VERIFIED,
    IllegalTransition,
    ImageState,
)

log = logging.getLogger(__name__)


class Catalog(Database):
    """A catalog database: ``Catalog.open(url)``, then ``.images(clinic, destination)``."""

    def __init__(self, engine):  # type: ignore[no-untyped-def]
        super().__init__(engine)
        self.series = SeriesRegistry(self)

    @classmethod
    def open(
        cls, url: str, password: str | None = None, *, migrate: bool = True, new: bool = False
    ) -> Catalog:
        """Connect to the catalog at ``url``, check it and bring its schema up to date.

        A new catalog is created only where none existed (a new worker: no SQLite file, or
        an empty PostgreSQL database), or with ``new``, which sets an SQLite catalog file
        aside (kept, renamed) and starts over. An SQLite file that exists must be a whole
        catalog: one cut to zero bytes, without its tables, or failing SQLite's
        ``quick_check`` is refused. Raises :class:`~pdata_sync.base.errors.ConfigError` naming
        the database when it cannot be reached or is refused."""
        path = sqlite_path(url)
        if path is not None and new and path.exists():
            kept = set_aside(path, now().strftime("%Y%m%dT%H%M%SZ"))
            log.warning("catalog: started a new catalog; the old one is kept as %s", kept)
        existed = path is not None and path.exists()
        if existed:
            check_sqlite_file(path)  # type: ignore[arg-type]
        catalog = cls(Database.connect(url, password))
        try:
            if existed:
                catalog.check_integrity()
            if migrate:
                catalog.migrate(create=not existed)
        except BaseException:
            catalog.close()
            raise
        return catalog

    def images(self, clinic_id: str, destination: str) -> ClinicImages:
        return ClinicImages(self, self.series, clinic_id, destination)

    def orthanc(self, clinic_id: str, server: str) -> OrthancRecords:
        """What the Orthanc at ``server`` holds of the clinic's images."""
        return OrthancRecords(self, clinic_id, server)

    def marks(self, clinic_id: str, destination: str) -> SyncMarks:
        """What incremental runs of the clinic in this destination compare against."""
        return SyncMarks(self, clinic_id, destination)

    def lock(self, clinic_id: str, purpose: str, flow_run_id: str | None = None) -> ClinicLock:
        return ClinicLock(self, clinic_id, purpose, flow_run_id)


__all__ = [
    "ACCEPT",
    "CLOCK_TOLERANCE",
    "CONFIRM",
    "DRIFTED",
    "HEAD_REVISION",
    "LEGACY_DESTINATION",
    "MATCH",
    "MIGRATIONS",
    "OrthancRecords",
    "OrthancRow",
    "PENDING",
    "RETIRED",
    "STATES",
    "ACCEPTED",
    "VERIFIED",
    "VERSION_TABLE",
    "Catalog",
    "CatalogRow",
    "ClinicImages",
    "INVENTORY_COLUMNS",
    "ClinicLock",
    "Holder",
    "IllegalTransition",
    "ImageState",
    "PendingItem",
    "Settled",
    "SyncMarks",
    "SourceInfo",
    "default_catalog_url",
    "destination_of",
    "image_events",
    "image_history",
    "images",
    "in_the_future",
    "metadata",
    "now",
    "orthanc_instances",
    "series",
    "studies",
]
