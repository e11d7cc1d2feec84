"""An event's own detail: where a retired object went and why, kept on the ``retire`` event
itself. The row's ``retired_to`` is cleared when the file comes back under its key, so an
audit read from the row lost where the retired copy had gone; the event keeps it for good.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_events") as batch:
        batch.add_column(sa.Column("detail", sa.String(1500), nullable=True))
    # the retire events of rows still retired: their row still says where the copy went
    op.execute(
        """
        UPDATE image_events SET detail = (
            SELECT images.retired_to || ' (' || COALESCE(images.retired_reason, '') || ')'
            FROM images
            WHERE images.clinic_id = image_events.clinic_id
              AND images.destination = image_events.destination
              AND images.key = image_events.key
              AND images.state = 'retired'
              AND images.retired_to IS NOT NULL
        )
        WHERE transition = 'retire'
          AND id = (
            SELECT MAX(e.id) FROM image_events e
            WHERE e.clinic_id = image_events.clinic_id
              AND e.destination = image_events.destination
              AND e.key = image_events.key
              AND e.transition = 'retire'
          )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("image_events") as batch:
        batch.drop_column("detail")
