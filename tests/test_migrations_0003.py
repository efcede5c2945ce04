"""Migration 0003: a registry at 0002 (keys made by the old create_all) upgrades in place."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from forgeml.governance.keys import KeyStore
from forgeml.registry import Registry
from forgeml.registry.schema import api_keys
from forgeml.registry.store import MIGRATIONS_DIR


def _alembic(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def test_upgrade_from_0002_keeps_assets_jobs_and_keys(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    command.upgrade(_alembic(url), "0002")
    engine = sa.create_engine(url)
    api_keys.create(engine)  # what `forgeml keys create` did before 0003
    key, info = KeyStore(engine).create_key("agent-1", roles=["jobs:submit"])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, args, status, submitted_by, created_at, attempts, "
                "max_attempts, cancel_requested) VALUES ('job-1', '[\"runs\",\"list\"]', "
                "'queued', 'agent-1', :t, 0, 3, 0)"
            ),
            {"t": datetime(2026, 1, 1)},
        )
        assert {r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))} == {
            "0002"
        }
    engine.dispose()

    reg = Registry(url, tmp_path / "artifacts")  # migrates to head on open
    try:
        with reg.engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            tables = set(sa.inspect(conn).get_table_names())
        assert version == ScriptDirectory.from_config(_alembic(url)).get_current_head()
        assert {"control_budgets", "control_job_plans", "control_approvals"} <= tables
        principal = KeyStore(reg.engine).authenticate(key)
        assert principal is not None and principal.name == "agent-1"
        assert principal.roles == ("jobs:submit",)
        from forgeml.control.jobs import get_job

        assert get_job(reg, "job-1").submitted_by == "agent-1"
    finally:
        reg.close()


def test_fresh_registry_has_key_table_without_create_all(tmp_path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts")
    try:
        store = KeyStore(reg.engine)
        key, _ = store.create_key("human", roles=["admin"])
        assert store.authenticate(key).is_admin
        assert store.authenticate(key + "x") is None
    finally:
        reg.close()


def test_downgrade_to_0002_and_back(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = _alembic(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "0002")
    engine = sa.create_engine(url)
    assert not sa.inspect(engine).has_table("control_approvals")
    engine.dispose()
    command.upgrade(cfg, "head")
    engine = sa.create_engine(url)
    assert sa.inspect(engine).has_table("control_approvals")
    engine.dispose()
