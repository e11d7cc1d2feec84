"""images.checked_at (last listing that confirmed the object) and the state 'drifted'.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot alter a CHECK constraint: batch mode copies the table (env.py).
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("ck_images_state", type_="check")
        batch.create_check_constraint(
            "ck_images_state", "state IN ('pending', 'uploaded', 'verified', 'drifted')"
        )


def downgrade() -> None:
    # a drifted row was accepted by S3 once and is not confirmed now: *uploaded* says that
    op.execute("UPDATE images SET state = 'uploaded' WHERE state = 'drifted'")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_state", type_="check")
        batch.create_check_constraint(
            "ck_images_state", "state IN ('pending', 'uploaded', 'verified')"
        )
        batch.drop_column("checked_at")
