"""The image row state 'uploaded' is called 'accepted': S3 accepted a body but did not
confirm what it stores. "Uploaded" read as done, and the uploader calls an image uploaded
only once it is verified. Rows, the state a pending row restores, the replaced contents'
states and the events' from/to states are renamed alike, so a query over the catalog
meets one name for the state, whatever the date of the row.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATES = "'pending', '{}', 'verified', 'drifted', 'retired'"
COLUMNS = (
    ("images", "state"),
    ("images", "prior_state"),
    ("image_history", "state"),
    ("image_events", "from_state"),
    ("image_events", "to_state"),
)


def _rename(old: str, new: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode copies the table (env.py); the
    # rows change between dropping the old constraint and creating the new one
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_state", type_="check")
    for table, column in COLUMNS:
        op.execute(f"UPDATE {table} SET {column} = '{new}' WHERE {column} = '{old}'")
    with op.batch_alter_table("images") as batch:
        batch.create_check_constraint("ck_images_state", f"state IN ({STATES.format(new)})")


def upgrade() -> None:
    _rename("uploaded", "accepted")


def downgrade() -> None:
    _rename("accepted", "uploaded")
