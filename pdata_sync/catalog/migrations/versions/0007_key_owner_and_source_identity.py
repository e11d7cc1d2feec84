"""An index to find who holds a key in a destination (any clinic); the image's name from its
media row (a row that vanishes never re-keys an archived image); and what identifies a
source file besides its size and mtime: its ctime and inode (a full run compares them) and
when its bytes were last hashed (the rolling content check); where a replaced content was
kept (image_history.kept_at). docs/product-rules.md §2.5, §3.1, §3.5.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("image_name", sa.String(300), nullable=True))
        batch.add_column(sa.Column("source_ctime_ns", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("source_inode", sa.String(24), nullable=True))
        batch.add_column(sa.Column("content_checked_at", TS, nullable=True))
    with op.batch_alter_table("image_history") as batch:
        batch.add_column(sa.Column("kept_at", sa.String(1200), nullable=True))
    op.create_index("ix_images_dest_key", "images", ["destination", "key"])
    op.create_index(
        "ix_images_clinic_dest_hashed", "images", ["clinic_id", "destination", "content_checked_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_images_clinic_dest_hashed", table_name="images")
    op.drop_index("ix_images_dest_key", table_name="images")
    with op.batch_alter_table("image_history") as batch:
        batch.drop_column("kept_at")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("content_checked_at")
        batch.drop_column("source_inode")
        batch.drop_column("source_ctime_ns")
        batch.drop_column("image_name")
