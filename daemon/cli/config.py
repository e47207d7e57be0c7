"""`cabinet config …`: check the configuration; move emailed links to a new public URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from daemon import db, instance
from daemon.cli.state import CliState, pass_state
from daemon.clock import SystemClock
from daemon.config import DEFAULT, SCHEMA, Config


@click.group("config")
def config_group() -> None:
    """The configuration: what is in force, and the public URL of links."""


def _with_recorded(config: Config) -> Config:
    """The recorded public URL, if there is a database to ask (`check` never creates one)."""
    if config.is_sqlite and not Path(config.database_url.removeprefix("sqlite:///")).exists():
        return config
    engine = db.make_engine(config.database_url)
    try:
        return instance.with_recorded_public_url(config, engine)
    finally:
        engine.dispose()


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: source, settings, warnings.")
@pass_state
def check(state: CliState, as_json: bool) -> None:
    """Print the effective configuration and where each value came from: default, the file, or an
    environment variable (secrets masked). Exits 78 with the error if the configuration is invalid,
    or if it names another public URL than the one recorded with the instance.

    Example: cabinet config check --config /etc/cabinet/cabinet.toml
    """
    config = _with_recorded(state.config)
    if as_json:
        settings: dict[str, dict[str, Any]] = {
            section: {
                key: {"value": config.settings[(section, key)].shown(), "origin": config.settings[(section, key)].origin}
                for key in keys
            }
            for section, keys in SCHEMA.items()
        }
        document = {"source": str(config.source) if config.source else None, "settings": settings,
                    "warnings": list(config.warnings)}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    click.echo(f"# Cabinet configuration from {config.source or 'built-in defaults (no file)'}")
    for section, keys in SCHEMA.items():
        click.echo(f"\n[{section}]")
        lines = [(f"{key} = {json.dumps(config.settings[(section, key)].shown(), ensure_ascii=False)}",
                  config.settings[(section, key)].origin) for key in keys]
        width = max(len(line) for line, _ in lines)
        for line, origin in lines:
            click.echo(f"{line.ljust(width)}  # {origin}")
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)


@config_group.command("set-public-url")
@click.argument("url")
@pass_state
def set_public_url(state: CliState, url: str) -> None:
    """Record URL as the address emailed links carry, for every command and instance.

    `cabinet init` records the first one ([http] public_url, else http://<listen>); while
    [http] public_url names another, commands refuse to run. Links already emailed keep the
    old address: keep it answering (e.g. a redirect) until they expire.

    Example: cabinet config set-public-url https://cabinet.tremblay.example
    """
    config = state.config
    engine = db.make_engine(config.database_url)
    try:
        old = instance.change_public_url(engine, config, url, SystemClock().now())
    finally:
        engine.dispose()
    new = url.rstrip("/")
    click.echo(f"Links now use {new}" + (f" (was {old})." if old and old != new else "."))
    origin = config.origin("http", "public_url")
    if origin != DEFAULT and config.http.public_url != new:
        source = origin if not Path(origin).is_absolute() else f"[http] public_url in {origin}"
        click.echo(f"warning: {source} still says {config.http.public_url}: change or remove it, "
                   "else commands refuse to run", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(config_group)
