"""Deleting assets: a deleted asset keeps its row, marked with when, by whom and why, so
lineage and the audit log still resolve it; its stored files are removed.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=False), nullable=True))
        batch.add_column(sa.Column("deleted_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("delete_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Rows of deleted assets would read as live (without files) at 0003: drop them first.
    op.execute("DELETE FROM assets WHERE deleted_at IS NOT NULL")
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("delete_reason")
        batch.drop_column("deleted_by")
        batch.drop_column("deleted_at")
