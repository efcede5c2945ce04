"""Alembic environment for the registry, driven programmatically by `Registry.__init__`.

The caller passes an open connection in `config.attributes["connection"]` (it already
holds the migration lock); offline/CLI use falls back to `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from forgeml.registry.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection) -> None:
    # render_as_batch lets future ALTERs work on SQLite (copy-and-move table strategy).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    run_migrations(conn)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        run_migrations(conn)
        conn.commit()
    engine.dispose()
