"""Migration 0005: a registry made before it (API keys, a study journal made on first use)
opens, upgrades in place, and keeps its keys and study history; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from forgeml.governance.keys import KeyStore
from forgeml.hpo.storage import RegistryJournalBackend
from forgeml.registry import Registry
from forgeml.registry.schema import Base, api_keys, hpo_journal
from forgeml.registry.store import MIGRATIONS_DIR

PG_URL = os.environ.get("FORGEML_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not PG_URL:
        pytest.skip("FORGEML_TEST_PG_URL is not set (see .ci/start_postgres.sh)")
    schema = f"forgeml_m_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    pg = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield pg.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _alembic(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_registry_before_0005_upgrades_in_place_and_its_keys_authenticate(url, tmp_path) -> None:
    command.upgrade(_alembic(url), "0002")
    engine = sa.create_engine(url)
    api_keys.create(engine)  # what `forgeml keys create` did before 0003
    key, _ = KeyStore(engine).create_key("agent-1", roles=["jobs:submit"], clearance="internal")
    engine.dispose()
    command.upgrade(_alembic(url), "0004")
    engine = sa.create_engine(url)
    hpo_journal.create(engine)  # what hpo/storage.py did on a study's first use before 0005
    with engine.begin() as conn:
        conn.execute(
            hpo_journal.insert(),
            [{"log_number": i, "entry": json.dumps({"op": i})} for i in range(3)],
        )
    assert _revision(engine) == "0004"
    engine.dispose()

    reg = Registry(url, tmp_path / "artifacts")  # migrates to head on open
    try:
        head = ScriptDirectory.from_config(_alembic(url)).get_current_head()
        assert head >= "0005" and _revision(reg.engine) == head
        with reg.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        principal = KeyStore(reg.engine).authenticate(key)
        assert principal is not None and principal.name == "agent-1"
        assert principal.roles == ("jobs:submit",) and principal.clearance == "internal"
        assert KeyStore(reg.engine).authenticate(key[:-1]) is None
        backend = RegistryJournalBackend(reg)
        assert list(backend.read_logs(0)) == [{"op": 0}, {"op": 1}, {"op": 2}]
        backend.append_logs([{"op": 3}])
        assert list(backend.read_logs(3)) == [{"op": 3}]
    finally:
        reg.close()


def test_fresh_registry_has_the_journal_and_a_downgrade_keeps_its_history(url, tmp_path) -> None:
    reg = Registry(url, tmp_path / "artifacts")
    try:
        assert sa.inspect(reg.engine).has_table("hpo_journal")  # before any study
        RegistryJournalBackend(reg).append_logs([{"op": 0}])
    finally:
        reg.close()
    command.downgrade(_alembic(url), "0004")
    command.upgrade(_alembic(url), "head")
    reg = Registry(url, tmp_path / "artifacts")
    try:
        assert list(RegistryJournalBackend(reg).read_logs(0)) == [{"op": 0}]
    finally:
        reg.close()
