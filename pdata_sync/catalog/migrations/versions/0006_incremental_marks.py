"""patient_marks and full_runs: what incremental runs compare against (docs/adr/0010).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "patient_marks",
        sa.Column("clinic_id", sa.String(64), primary_key=True),
        sa.Column("destination", sa.String(1100), primary_key=True),
        sa.Column("patient_id", sa.BigInteger, primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
    )
    op.create_table(
        "full_runs",
        sa.Column("clinic_id", sa.String(64), primary_key=True),
        sa.Column("destination", sa.String(1100), primary_key=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("settings", sa.String(64), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("full_runs")
    op.drop_table("patient_marks")
