"""The HPO journal under Alembic (until now made on first use by hpo/storage.py), so every
table of the registry database is a migration's. A journal made the old way is kept as is.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Registries that ran a study before this revision made `hpo_journal` themselves; keep
    # that table and its logs (the same columns as below).
    if not sa.inspect(op.get_bind()).has_table("hpo_journal"):
        op.create_table(
            "hpo_journal",
            sa.Column("log_number", sa.BigInteger(), primary_key=True, autoincrement=False),
            sa.Column("entry", sa.Text(), nullable=False),
        )


def downgrade() -> None:
    # Nothing to undo: forgeml at 0004 makes `hpo_journal` itself when it is missing and
    # uses the one kept here, so dropping it would only lose the study history.
    pass
