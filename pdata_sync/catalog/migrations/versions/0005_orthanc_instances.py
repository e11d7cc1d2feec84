"""orthanc_instances: what Orthanc (a second destination) holds of each image, with
Orthanc's ids and status (docs/orthanc.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "orthanc_instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("clinic_id", sa.String(64), nullable=False),
        sa.Column("server", sa.String(1100), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(44), nullable=True),
        sa.Column("series_id", sa.String(44), nullable=True),
        sa.Column("study_id", sa.String(44), nullable=True),
        sa.Column("patient_id", sa.String(44), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(300), nullable=True),
        sa.Column("stored_at", TS, nullable=False),
        sa.Column("checked_at", TS, nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.UniqueConstraint("clinic_id", "server", "key", name="uq_orthanc_clinic_server_key"),
        sa.CheckConstraint(
            "status IN ('stored', 'already_stored', 'rejected', 'missing')",
            name="ck_orthanc_status",
        ),
    )


def downgrade() -> None:
    op.drop_table("orthanc_instances")
