"""Optuna study storage inside the workspace's registry database.

Optuna's own `RDBStorage` cannot share a database with the registry: both keep their schema
revision in the same `alembic_version` table. Optuna's `JournalStorage` instead replays an
append-only log, kept in the registry's `hpo_journal` table (migration 0005).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from sqlalchemy import func, insert, select, text

from forgeml.core.workspace import Workspace
from forgeml.registry import Registry, open_registry
from forgeml.registry.schema import hpo_journal


class RegistryJournalBackend(BaseJournalBackend):
    """Optuna journal in the registry database: log numbers are contiguous and written in
    order (SQLite serialises writers; PostgreSQL takes an exclusive table lock per append),
    so every process replays the same history."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        with self.reg.transaction() as s:
            rows = s.execute(
                select(hpo_journal.c.entry)
                .where(hpo_journal.c.log_number >= log_number_from)
                .order_by(hpo_journal.c.log_number)
            ).all()
        return [json.loads(r[0]) for r in rows]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not logs:
            return
        with self.reg.transaction(write=True) as s:
            if self.reg.engine.dialect.name == "postgresql":
                s.execute(text("LOCK TABLE hpo_journal IN EXCLUSIVE MODE"))
            start = s.execute(
                select(func.coalesce(func.max(hpo_journal.c.log_number), -1))
            ).scalar()
            s.execute(
                insert(hpo_journal),
                [
                    {"log_number": start + 1 + i, "entry": json.dumps(log)}
                    for i, log in enumerate(logs)
                ],
            )


def study_storage(ws: Workspace) -> JournalStorage:
    """The Optuna storage for every study of the workspace `ws`."""
    return JournalStorage(RegistryJournalBackend(open_registry(ws)))
