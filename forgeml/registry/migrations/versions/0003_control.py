"""Control plane: API keys (until now made on first use by serve/keys.py), per-principal
budgets, the dry-run plan of every job, and pending human approvals.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Registries written before this revision made `serve_api_keys` with create_all on the
    # first `forgeml keys create`; keep that table and its keys as they are.
    if not sa.inspect(op.get_bind()).has_table("serve_api_keys"):
        op.create_table(
            "serve_api_keys",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("principal", sa.String(200), nullable=False),
            sa.Column("salt", sa.String(64), nullable=False),
            sa.Column("secret_sha256", sa.String(64), nullable=False),
            sa.Column("roles", sa.JSON(), nullable=False),
            sa.Column("models", sa.JSON(), nullable=False),
            sa.Column("endpoints", sa.JSON(), nullable=False),
            sa.Column("requests_per_minute", sa.Integer(), nullable=True),
            sa.Column("tokens_per_minute", sa.Integer(), nullable=True),
            sa.Column("clearance", sa.String(64), nullable=True),
            sa.Column("label", sa.String(200), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index("ix_serve_api_keys_principal", "serve_api_keys", ["principal"])

    op.create_table(
        "control_budgets",
        sa.Column("principal", sa.String(200), primary_key=True),
        sa.Column("cpu_hours", sa.Float(), nullable=True),
        sa.Column("gpu_hours", sa.Float(), nullable=True),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("max_model_params", sa.BigInteger(), nullable=True),
        sa.Column("data_clearance", sa.String(64), nullable=True),
        sa.Column("since", sa.DateTime(timezone=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
    )

    op.create_table(
        "control_job_plans",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("estimated_hours", sa.Float(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_index("ix_control_job_plans_principal", "control_job_plans", ["principal"])

    op.create_table(
        "control_approvals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_control_approvals_status", "control_approvals", ["status"])


def downgrade() -> None:
    op.drop_table("control_approvals")
    op.drop_table("control_job_plans")
    op.drop_table("control_budgets")
    op.drop_table("serve_api_keys")
