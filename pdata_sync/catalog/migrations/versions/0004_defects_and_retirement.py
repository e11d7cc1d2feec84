"""images.source_defect (what is wrong with a source file archived byte for byte anyway,
e.g. pixel data cut short), and retirement: the state 'retired' with where the object went
(images.retired_to) and why (images.retired_reason).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot alter a CHECK constraint: batch mode copies the table (env.py).
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("source_defect", sa.String(200), nullable=True))
        batch.add_column(sa.Column("retired_to", sa.String(1200), nullable=True))
        batch.add_column(sa.Column("retired_reason", sa.String(200), nullable=True))
        batch.drop_constraint("ck_images_state", type_="check")
        batch.create_check_constraint(
            "ck_images_state",
            "state IN ('pending', 'uploaded', 'verified', 'drifted', 'retired')",
        )


def downgrade() -> None:
    # a retired row's object is gone from images/: *drifted* says S3 does not hold it there
    op.execute("UPDATE images SET state = 'drifted' WHERE state = 'retired'")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_state", type_="check")
        batch.create_check_constraint(
            "ck_images_state", "state IN ('pending', 'uploaded', 'verified', 'drifted')"
        )
        batch.drop_column("retired_reason")
        batch.drop_column("retired_to")
        batch.drop_column("source_defect")
