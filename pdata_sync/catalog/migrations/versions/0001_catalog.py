"""The image catalog: studies, series, images (pending -> uploaded -> verified), history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("clinic_id", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("clinic_id", "study_instance_uid", name="uq_studies_clinic_uid"),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("study_id", "series_instance_uid", name="uq_series_study_uid"),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("clinic_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("image_id", sa.BigInteger, nullable=False),
        sa.Column("patient_guid", sa.String(36), nullable=False),
        sa.Column("rel_path", sa.String(1024), nullable=False),
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
        sa.Column("uploaded_at", TS, nullable=True),
        sa.Column("verified_at", TS, nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("clinic_id", "key", name="uq_images_clinic_key"),
        sa.CheckConstraint("state IN ('pending', 'uploaded', 'verified')", name="ck_images_state"),
    )
    op.create_index("ix_images_clinic_state", "images", ["clinic_id", "state"])
    op.create_table(
        "image_history",
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
    )
    op.create_index("ix_image_history_image", "image_history", ["image_row_id"])


def downgrade() -> None:
    op.drop_index("ix_image_history_image", "image_history")
    op.drop_table("image_history")
    op.drop_index("ix_images_clinic_state", "images")
    op.drop_table("images")
    op.drop_table("series")
    op.drop_table("studies")
