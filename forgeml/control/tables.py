"""Tables of the control plane (budgets, job plans, approvals), as migration 0003 makes them.

SQLAlchemy Core on the registry's engine, kept apart from the registry's ORM like
`forgeml.serve.keys`; only forgeml.control modules read or write them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

budgets = Table(
    "control_budgets",
    metadata,
    Column("principal", String(200), primary_key=True),
    Column("cpu_hours", Float),
    Column("gpu_hours", Float),
    Column("max_concurrent_jobs", Integer),
    Column("max_model_params", BigInteger),
    Column("data_clearance", String(64)),
    Column("since", DateTime(timezone=False), nullable=False),  # usage counts from here
    Column("updated_at", DateTime(timezone=False), nullable=False),
    Column("updated_by", String(255), nullable=False),
)

job_plans = Table(
    "control_job_plans",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("principal", String(200), nullable=False, index=True),
    Column("device", String(16), nullable=False),  # "cpu" or "gpu": which hours it is charged
    Column("estimated_hours", Float, nullable=False),
    Column("plan", JSON, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

approvals = Table(
    "control_approvals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("action", String(32), nullable=False),
    Column("params", JSON, nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("decided_at", DateTime(timezone=False)),
    Column("decided_by", String(255)),
    Column("result", JSON),
    Column("error", Text),
)
