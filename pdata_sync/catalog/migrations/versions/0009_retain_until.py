"""The Object Lock date of an image's current version (s3.object_lock): the catalog keeps
the date the retention rule gave it, so an inventory and an audit can read it without asking
S3; NULL where the version was written without a lock. docs/adr/0017-retention-rule.md.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("retain_until", sa.Date, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("retain_until")
