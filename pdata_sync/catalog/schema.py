"""The catalog's tables (SQLAlchemy Core). Alembic migrations in
``pdata_sync/catalog/migrations`` build exactly this schema, and a new catalog is created
from it directly at HEAD_REVISION; a test compares the two ways."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

VERSION_TABLE = "pdata_sync_catalog_version"
# The newest migration; opening a catalog already at it skips Alembic (and its ~0.5 s import).
# tests/integration/test_catalog.py checks it against the migration scripts.
HEAD_REVISION = "0010"
MIGRATIONS = Path(__file__).parent / "migrations"
# rows written before destinations were recorded (migration 0003): kept, never trusted
LEGACY_DESTINATION = ""

TS = sa.DateTime(timezone=True)
metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("clinic_id", sa.String(64), nullable=False),
    sa.Column("study_instance_uid", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("clinic_id", "study_instance_uid", name="uq_studies_clinic_uid"),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("modality", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("study_id", "series_instance_uid", name="uq_series_study_uid"),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("clinic_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("image_id", sa.BigInteger, nullable=False),
    sa.Column("patient_guid", sa.String(36), nullable=False),
    sa.Column("rel_path", sa.String(1024), nullable=False),
    # content columns stay empty while a new key is only pending
    sa.Column("source_size", sa.BigInteger, nullable=True),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("etag", sa.String(80), nullable=True),
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), nullable=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=True),
    sa.Column("modality", sa.String(16), nullable=True),
    sa.Column("acquisition_date", sa.String(16), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("pending_at", TS, nullable=True),
    sa.Column("uploaded_at", TS, nullable=True),  # when S3 accepted the current content
    sa.Column("verified_at", TS, nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),  # the run that uploaded it
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("checked_at", TS, nullable=True),
    # endpoint + bucket the object is in (pdata_sync.catalog.destination)
    sa.Column("destination", sa.String(1100), nullable=False),
    # the state a pending row restores when its upload is released (None: no row)
    sa.Column("prior_state", sa.String(16), nullable=True),
    # what is wrong with the source file archived anyway (pixel data cut short); NULL: intact
    sa.Column("source_defect", sa.String(200), nullable=True),
    # a retired row: where its object went (outside images/) and why
    sa.Column("retired_to", sa.String(1200), nullable=True),
    sa.Column("retired_reason", sa.String(200), nullable=True),
    # the image's name from its media row when it was settled ("" for a row without a
    # name); NULL: it had no row (the fallback name), or the row predates migration 0007
    sa.Column("image_name", sa.String(300), nullable=True),
    # what else identifies the source file (a full run compares them; an edit that kept
    # size and mtime changes the ctime), and when its bytes were last hashed (the rolling
    # content check re-hashes the oldest first); migration 0007
    sa.Column("source_ctime_ns", sa.BigInteger, nullable=True),
    sa.Column("source_inode", sa.String(24), nullable=True),
    sa.Column("content_checked_at", TS, nullable=True),
    # the Object Lock date of the current version (s3.object_lock); NULL: not locked (0009)
    sa.Column("retain_until", sa.Date, nullable=True),
    sa.UniqueConstraint("clinic_id", "destination", "key", name="uq_images_clinic_dest_key"),
    sa.CheckConstraint(
        "state IN ('pending', 'accepted', 'verified', 'drifted', 'retired')",
        name="ck_images_state",
    ),
)
sa.Index("ix_images_clinic_dest_state", images.c.clinic_id, images.c.destination, images.c.state)
# who holds a key in a destination, whatever the clinic (a key is never shared)
sa.Index("ix_images_dest_key", images.c.destination, images.c.key)
# the rolling content check re-hashes the files hashed longest ago first
sa.Index(
    "ix_images_clinic_dest_hashed",
    images.c.clinic_id,
    images.c.destination,
    images.c.content_checked_at,
)

image_history = sa.Table(
    "image_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_row_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("source_size", sa.BigInteger, nullable=False),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.String(80), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("verified_at", TS, nullable=True),
    sa.Column("replaced_at", TS, nullable=False),
    sa.Column("replaced_by_flow_run_id", sa.String(64), nullable=True),
    # where the replaced content's object was kept (retired/...), when it was (0007)
    sa.Column("kept_at", sa.String(1200), nullable=True),
)
sa.Index("ix_image_history_image", image_history.c.image_row_id)

# Every state change of an image row, append-only (rows that go keep their events).
image_events = sa.Table(
    "image_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("clinic_id", sa.String(64), nullable=False),
    sa.Column("destination", sa.String(1100), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("transition", sa.String(16), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=True),  # None: there was no row
    sa.Column("to_state", sa.String(16), nullable=True),  # None: the row went
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("at", TS, nullable=False),
    # what the event itself records beyond its states: for a retire, where the copy went
    sa.Column("detail", sa.String(1500), nullable=True),
)
sa.Index(
    "ix_image_events_key", image_events.c.clinic_id, image_events.c.destination, image_events.c.key
)

# What Orthanc (a second destination) holds of an image: one row per clinic, Orthanc server
# and S3 key, for the content (sha256) stored there; pdata_sync.catalog.orthanc.
orthanc_instances = sa.Table(
    "orthanc_instances",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("clinic_id", sa.String(64), nullable=False),
    sa.Column("server", sa.String(1100), nullable=False),  # Orthanc's base URL
    sa.Column("key", sa.String(1024), nullable=False),  # the image's S3 key
    sa.Column("sha256", sa.String(64), nullable=False),  # the content Orthanc was given
    sa.Column("instance_id", sa.String(44), nullable=True),
    sa.Column("series_id", sa.String(44), nullable=True),
    sa.Column("study_id", sa.String(44), nullable=True),
    sa.Column("patient_id", sa.String(44), nullable=True),
    # stored | already_stored | rejected (Orthanc's answer; ids empty when rejected) |
    # missing (verify no longer found it)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(300), nullable=True),  # Orthanc's words for a rejection
    sa.Column("stored_at", TS, nullable=False),
    sa.Column("checked_at", TS, nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.UniqueConstraint("clinic_id", "server", "key", name="uq_orthanc_clinic_server_key"),
    sa.CheckConstraint(
        "status IN ('stored', 'already_stored', 'rejected', 'missing')", name="ck_orthanc_status"
    ),
)

# Incremental runs (pdata_sync.catalog.marks, docs/adr/0010): per clinic, destination and
# Sidexis patient, the digest of what the database and the resolver said when a run last
# handled the patient's folder completely; and per clinic and destination, the last full run.
patient_marks = sa.Table(
    "patient_marks",
    metadata,
    sa.Column("clinic_id", sa.String(64), primary_key=True),
    sa.Column("destination", sa.String(1100), primary_key=True),
    sa.Column("patient_id", sa.BigInteger, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("recorded_at", TS, nullable=False),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
)

full_runs = sa.Table(
    "full_runs",
    metadata,
    sa.Column("clinic_id", sa.String(64), primary_key=True),
    sa.Column("destination", sa.String(1100), primary_key=True),
    sa.Column("started_at", TS, nullable=False),  # the last full run's start
    sa.Column(
        "settings", sa.String(64), nullable=False
    ),  # pdata_sync.source.changes.settings_digest
    sa.Column("flow_run_id", sa.String(64), nullable=True),
)

# One row per clinic while a sync or verify of it runs (pdata_sync.catalog.lock).
clinic_locks = sa.Table(
    "clinic_locks",
    metadata,
    sa.Column("clinic_id", sa.String(64), primary_key=True),
    sa.Column("token", sa.String(32), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("acquired_at", TS, nullable=False),
    sa.Column("heartbeat_at", TS, nullable=False),
)
