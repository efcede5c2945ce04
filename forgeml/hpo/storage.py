"""Optuna study storage inside the workspace's registry database.

Optuna's own `RDBStorage` cannot share a database with the registry: both keep their schema
revision in the same `alembic_version` table, so each refuses the other's revision. Optuna's
`JournalStorage` instead replays an append-only log, which we keep in one table of our own
(`hpo_journal`, outside the registry's Alembic migrations) on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

from forgeml.core.workspace import Workspace
from forgeml.registry import Registry

_metadata = MetaData()
JOURNAL = Table(
    "hpo_journal",
    _metadata,
    Column("log_number", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", Text, nullable=False),
)


class RegistryJournalBackend(BaseJournalBackend):
    """Optuna journal in the registry database: log numbers are contiguous and written in
    order (SQLite serialises writers; PostgreSQL takes an exclusive table lock per append),
    so every process replays the same history."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        try:
            # As a write transaction: on SQLite a deferred one that read the schema first
            # cannot wait for another writer's lock (WAL answers "database is locked" at once).
            JOURNAL.create(reg.engine.execution_options(forgeml_write=True), checkfirst=True)
        except DBAPIError:
            # Another process created it between the check and the CREATE (PostgreSQL then
            # reports a duplicate type or table): fine when the table is there now.
            if not inspect(reg.engine).has_table(JOURNAL.name):
                raise

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        with self.reg.transaction() as s:
            rows = s.execute(
                select(JOURNAL.c.entry)
                .where(JOURNAL.c.log_number >= log_number_from)
                .order_by(JOURNAL.c.log_number)
            ).all()
        return [json.loads(r[0]) for r in rows]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not logs:
            return
        with self.reg.transaction(write=True) as s:
            if self.reg.engine.dialect.name == "postgresql":
                s.execute(text("LOCK TABLE hpo_journal IN EXCLUSIVE MODE"))
            start = s.execute(select(func.coalesce(func.max(JOURNAL.c.log_number), -1))).scalar()
            s.execute(
                insert(JOURNAL),
                [
                    {"log_number": start + 1 + i, "entry": json.dumps(log)}
                    for i, log in enumerate(logs)
                ],
            )


def study_storage(ws: Workspace) -> JournalStorage:
    """The Optuna storage for every study of the workspace `ws`."""
    from forgeml.pipeline.stages import open_registry

    return JournalStorage(RegistryJournalBackend(open_registry(ws)))
