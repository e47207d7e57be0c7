"""Alembic environment: runs on the connection Cabinet hands it, or on the configured URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import context
from sqlalchemy import engine_from_config, pool

from daemon.models import Base

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, kind: NameFilterType, parents: NameFilterParentNames) -> bool:
    """Autogenerate leaves the search's trigram index alone: it lives outside the models (0015, 0022; either
    of PostgreSQL's layouts, as an operator may have made 0015's by hand)."""
    return not (name or "").startswith(
        ("clients_search", "ix_clients_search_trgm", "ix_clients_search_key_trgm", "ix_clients_email_trgm"))


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True,
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()


run()
