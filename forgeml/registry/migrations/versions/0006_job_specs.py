"""Typed job specs: the `jobs` table gains `spec` (JSON), what a worker runs. Jobs queued
before it keep their command line in `args` and a NULL spec (the worker reads it once).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: a plain ADD COLUMN on SQLite and PostgreSQL alike, rows kept as they are.
    op.add_column("jobs", sa.Column("spec", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite before 3.35 cannot drop a column
        batch.drop_column("spec")
