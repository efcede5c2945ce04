"""The registry scenarios of test_registry.py and the concurrent writers, on PostgreSQL.

Needs FORGEML_TEST_PG_URL (CI: `export FORGEML_TEST_PG_URL="$(.ci/start_postgres.sh | tail -n1)"`).
Each test gets its own schema (via search_path), dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from forgeml.registry import Registry
from forgeml.registry.schema import Base

try:  # tests/ may or may not be a package; the suites live next to this file either way
    from tests import test_registry as suite
    from tests import test_registry_concurrency as concurrency
except ImportError:
    import test_registry as suite
    import test_registry_concurrency as concurrency

PG_URL = os.environ.get("FORGEML_TEST_PG_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not PG_URL,
        reason="FORGEML_TEST_PG_URL is not set; start a server with "
        '`export FORGEML_TEST_PG_URL="$(.ci/start_postgres.sh | tail -n1)"`',
    ),
]


@pytest.fixture
def pg_url() -> str:
    """A URL whose connections use a fresh schema of their own."""
    schema = f"forgeml_t_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def reg(pg_url: str, tmp_path: Path) -> Registry:
    registry = Registry(pg_url, tmp_path / "pg-art")
    yield registry
    registry.close()


# The same scenarios as on SQLite: pytest collects them here and gives them this `reg`.
test_add_and_resolve_by_id_prefix_name = suite.test_add_and_resolve_by_id_prefix_name
test_content_addressing_is_idempotent = suite.test_content_addressing_is_idempotent
test_unknown_refs_and_kinds = suite.test_unknown_refs_and_kinds
test_ambiguous_prefix_lists_candidates = suite.test_ambiguous_prefix_lists_candidates
test_runs_metrics_and_cache = suite.test_runs_metrics_and_cache
test_lineage_up_and_down = suite.test_lineage_up_and_down
test_lineage_survives_cycles = suite.test_lineage_survives_cycles
test_aliases_history_and_rollback = suite.test_aliases_history_and_rollback


def _alembic_config():
    from alembic.config import Config

    from forgeml.registry.store import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def test_migrations_on_postgres(pg_url: str, tmp_path: Path) -> None:
    with Registry(pg_url, tmp_path / "art") as reg:
        assert reg.engine.dialect.name == "postgresql"
        asset = reg.add_asset("dataset", "d", suite._folder(tmp_path / "d", {"a": "1"}))
    with Registry(pg_url, tmp_path / "art") as reg:  # reopening skips the migration
        assert reg.get_asset("d") == asset
        with reg.engine.connect() as conn:
            head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
            assert MigrationContext.configure(conn).get_current_revision() == head
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_concurrent_writers_on_fresh_postgres(pg_url: str, tmp_path: Path) -> None:
    n_procs, n_ops = 3, 10
    work = tmp_path / "work"
    work.mkdir()
    results = concurrency.run_writers(pg_url, tmp_path / "art", work, n_procs, n_ops)
    with Registry(pg_url, tmp_path / "art") as reg:
        concurrency.check_writes(reg, results, n_procs, n_ops)


def test_a_deletion_and_a_new_child_never_both_commit(reg: Registry, tmp_path: Path) -> None:
    """PostgreSQL runs writers at once: the deletion holds its asset FOR UPDATE and a new
    child holds its parent FOR SHARE, so a live child of a deleted asset never appears
    (started together from two threads, 8 times; exactly one of the two must succeed)."""
    import threading

    from forgeml.core.errors import ForgeError

    outcomes = []
    for i in range(8):
        src = tmp_path / f"p{i}"
        src.mkdir()
        (src / "f.txt").write_text(f"parent {i}")
        child_src = tmp_path / f"c{i}"
        child_src.mkdir()
        (child_src / "f.txt").write_text(f"child {i}")
        parent = reg.add_asset("dataset", f"p{i}", src)
        start = threading.Barrier(2)
        result: dict[str, bool] = {}

        def delete(
            parent_id: str = parent.id, result: dict = result, start: threading.Barrier = start
        ) -> None:
            start.wait()
            try:
                reg.delete_asset(parent_id, actor="t")
                result["deleted"] = True
            except ForgeError:
                result["deleted"] = False

        def add_child(
            parent_id: str = parent.id,
            child_src: Path = child_src,
            result: dict = result,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            try:
                reg.add_asset("tokenizer", "child", child_src, parents=[parent_id])
                result["child"] = True
            except ForgeError:
                result["child"] = False

        threads = [threading.Thread(target=delete), threading.Thread(target=add_child)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert result["deleted"] != result["child"], result  # exactly one of them wins
        outcomes.append(result["deleted"])
    print(f"deletion won {sum(outcomes)} of {len(outcomes)} races")
