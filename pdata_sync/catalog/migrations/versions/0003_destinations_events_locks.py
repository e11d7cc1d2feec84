"""Rows keyed by destination (endpoint + bucket), the state a pending row restores, an
append-only event per state change, and one lock row per clinic being synced or verified.

Rows written before this revision do not say which destination they describe: they get
destination '' and are never trusted again (the next run compares contents instead).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.drop_index("ix_images_clinic_state", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.add_column(
            sa.Column("destination", sa.String(1100), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("prior_state", sa.String(16), nullable=True))
        batch.drop_constraint("uq_images_clinic_key", type_="unique")
        batch.create_unique_constraint(
            "uq_images_clinic_dest_key", ["clinic_id", "destination", "key"]
        )
    with op.batch_alter_table("images") as batch:
        batch.alter_column("destination", server_default=None)
    op.create_index("ix_images_clinic_dest_state", "images", ["clinic_id", "destination", "state"])
    op.create_table(
        "image_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("clinic_id", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(1100), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("transition", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_image_events_key", "image_events", ["clinic_id", "destination", "key"])
    op.create_table(
        "clinic_locks",
        sa.Column("clinic_id", sa.String(64), primary_key=True),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("clinic_locks")
    op.drop_index("ix_image_events_key", table_name="image_events")
    op.drop_table("image_events")
    op.drop_index("ix_images_clinic_dest_state", table_name="images")
    # one row per clinic and key again: keep the newest destination's row of each key
    op.execute(
        "DELETE FROM images WHERE id NOT IN (SELECT max(id) FROM images GROUP BY clinic_id, key)"
        " AND id NOT IN (SELECT image_row_id FROM image_history)"
    )
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("uq_images_clinic_dest_key", type_="unique")
        batch.create_unique_constraint("uq_images_clinic_key", ["clinic_id", "key"])
        batch.drop_column("prior_state")
        batch.drop_column("destination")
    op.create_index("ix_images_clinic_state", "images", ["clinic_id", "state"])
