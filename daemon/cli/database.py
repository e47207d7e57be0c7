"""`cabinet db …`: schema migrations and backups."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from daemon import db
from daemon.cli.state import CliState, counted, pass_state
from daemon.errors import ConfigError
from daemon.retention import Retention


@click.group("db")
def database() -> None:
    """The database: migrations and backups."""


@database.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@pass_state
def upgrade(state: CliState, revision: str) -> None:
    """Apply the schema migrations (also done by `cabinet init`). Safe to run again."""
    engine = db.make_engine(state.config.database_url)
    try:
        db.upgrade(engine, revision)
    finally:
        engine.dispose()
    click.echo(f"Database schema is at {revision}.")


@database.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def backup(state: CliState, path: Path) -> None:
    """Copy the SQLite database to PATH, consistently, while Cabinet keeps serving.

    Uses SQLite's online backup API: the copy is one consistent snapshot even
    while writes go on. (For PostgreSQL use pg_dump.)
    """
    config = state.config
    if not config.is_sqlite:
        raise ConfigError("`cabinet db backup` is for the embedded SQLite database; back up PostgreSQL with pg_dump")
    source_path = config.database_url.removeprefix("sqlite:///")
    if not Path(source_path).exists():
        raise ConfigError(f"no database at {source_path}; run `cabinet init` first")
    if path.exists():
        raise ConfigError(f"{path} already exists; choose a new file name")
    source = sqlite3.connect(source_path, timeout=30)
    target = sqlite3.connect(path)
    try:
        with target:
            source.backup(target, pages=1024)
        check = target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()
        source.close()
    if check != "ok":
        raise ConfigError(f"the backup failed its integrity check: {check}")
    click.echo(f"Backed up {source_path} to {path}.")


@database.command("prune")
@pass_state
def prune(state: CliState) -> None:
    """Delete stored mail past [retention] (inbound_days, outbox_days), now.

    The scheduler does the same on each pass. Rows an open invitation, billing
    transfer or client setup still refers to are kept whatever their age.
    """
    cabinet = state.cabinet
    counts = Retention(cabinet.sessions, cabinet.clock, cabinet.config).prune()
    click.echo(f"Pruned {counted(counts['inbound_pruned'], 'inbound message')} and {counted(counts['outbox_pruned'], 'sent email')}.")


def register(cli: click.Group) -> None:
    cli.add_command(database)
