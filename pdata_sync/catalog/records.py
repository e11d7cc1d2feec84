"""The values that cross the catalog's boundary: what was read from a file, what is about to
be uploaded, what S3 answered, and a row as the uploader and ``verify`` read it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pdata_sync.base.clock import CLOCK_TOLERANCE, aware, in_the_future, now  # noqa: F401 - re-exported
from pdata_sync.catalog.states import ImageState, Transition
from pdata_sync.source.dicom_meta import DicomHeader


@dataclass(frozen=True)
class SourceInfo:
    """What was read from one source file: the facts a catalog row records."""

    rel_path: str
    image_id: int
    patient_guid: str
    size: int
    mtime_ns: int
    sha256: str
    header: DicomHeader
    # the name from the media row ("" for a row without one); None: no row (fallback name)
    image_name: str | None = None
    ctime_ns: int | None = None  # what else identifies the file (a full run compares them)
    inode: int | None = None
    # the Object Lock date the version written now carries (s3.object_lock); None: this
    # record wrote no locked version (the row keeps the date it had)
    retain_until: date | None = None


@dataclass(frozen=True)
class PendingItem:
    """A key about to be uploaded, and where from."""

    key: str
    rel_path: str
    image_id: int
    patient_guid: str


@dataclass(frozen=True)
class Settled:
    """What became of one pending key: ``transition`` is ACCEPT (S3 took the body, no
    confirmation), CONFIRM (uploaded and confirmed) or MATCH (S3 already held the bytes).
    ``uploaded_at``: when S3 accepted the body (None for MATCH)."""

    key: str
    info: SourceInfo
    transition: Transition
    etag: str
    uploaded_at: datetime | None = None
    kept_at: str | None = None  # where the content this replaces was kept (retired/...)


@dataclass(frozen=True)
class CatalogRow:
    """One image row as the uploader and ``verify`` need it."""

    key: str
    rel_path: str
    patient_guid: str
    size: int | None  # None until the first content is settled
    mtime_ns: int | None
    sha256: str | None
    etag: str | None
    state: ImageState
    # the last time S3 confirmed this content: by the upload's answer or a later listing
    confirmed_at: datetime | None = None
    ctime_ns: int | None = None  # the file's when the row was settled (None: not recorded)
    inode: str | None = None

    @classmethod
    def of(cls, r: Any) -> CatalogRow:
        times = [t for t in (aware(r.verified_at), aware(r.checked_at)) if t is not None]
        return cls(
            key=r.key,
            rel_path=r.rel_path,
            patient_guid=r.patient_guid,
            size=None if r.source_size is None else int(r.source_size),
            mtime_ns=None if r.source_mtime_ns is None else int(r.source_mtime_ns),
            sha256=r.sha256,
            etag=r.etag,
            state=ImageState(r.state),
            confirmed_at=max(times) if times else None,
            ctime_ns=None if r.source_ctime_ns is None else int(r.source_ctime_ns),
            inode=r.source_inode,
        )


ROW_COLUMNS = (
    "key",
    "rel_path",
    "patient_guid",
    "source_size",
    "source_mtime_ns",
    "sha256",
    "etag",
    "state",
    "verified_at",
    "checked_at",
    "source_ctime_ns",
    "source_inode",
)
