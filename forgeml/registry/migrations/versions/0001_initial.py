"""Initial registry tables: assets, runs, edges, aliases, alias_events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("n_files", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("producer_run", sa.String(64), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
    )
    op.create_index("ix_assets_kind", "assets", ["kind"])
    op.create_index("ix_assets_name", "assets", ["name"])
    op.create_index("ix_assets_sha256", "assets", ["sha256"])

    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("code_version", sa.String(128), nullable=False),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("launched_by", sa.String(255), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_runs_cache_key", "runs", ["stage", "config_hash", "status"])

    op.create_table(
        "edges",
        sa.Column("src", sa.String(64), primary_key=True),
        sa.Column("dst", sa.String(64), primary_key=True),
        sa.Column("relation", sa.String(16), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_index("ix_edges_dst", "edges", ["dst"])

    op.create_table(
        "aliases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
    )

    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("previous_asset_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_index("ix_alias_events_name", "alias_events", ["name"])


def downgrade() -> None:
    op.drop_table("alias_events")
    op.drop_table("aliases")
    op.drop_table("edges")
    op.drop_table("runs")
    op.drop_table("assets")
