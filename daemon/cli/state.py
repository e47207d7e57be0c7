"""What every command shares: the config path and a lazily built Cabinet."""

from __future__ import annotations

import json
from typing import Any, Iterable

import click

from daemon.app import Cabinet, build
from daemon.config import Config, load_config
from daemon.errors import ConfigError


class CliState:
    def __init__(self, config_path: str | None) -> None:
        self._config_path = config_path
        self._config: Config | None = None
        self._cabinet: Cabinet | None = None

    def use_config(self, path: str) -> None:
        """``--config`` given after the command name (read before the config is first used)."""
        if self._config_path is not None and self._config_path != path:
            raise click.UsageError(f"--config given twice: {self._config_path} and {path}")
        self._config_path = path

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self._config_path)
        return self._config

    @property
    def cabinet(self) -> Cabinet:
        if self._cabinet is None:
            try:
                self._cabinet = build(self.config)
            except OSError as exc:  # e.g. an unreadable data folder or key file: one line, exit 78
                raise ConfigError(f"cannot read {exc.filename or 'a file Cabinet needs'}: {exc.strerror}") from None
        return self._cabinet

    def close(self) -> None:
        if self._cabinet is not None:
            self._cabinet.close()


pass_state = click.make_pass_decorator(CliState)


def print_json(items: Iterable[Any], chunk: int = 500) -> None:
    """Print ``items`` as one indented JSON array, streamed a chunk at a time.

    The output is byte-for-byte what ``json.dumps(list, indent=2)`` gives, but only
    ``chunk`` items are held at once, so a 100k-client roster prints in flat memory.
    The first item is fetched before anything is printed, so an error (an unknown
    firm) leaves stdout empty.
    """
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        click.echo("[]")
        return
    parts = ["[\n" + _indented(first)]
    for item in iterator:
        parts.append(",\n" + _indented(item))
        if len(parts) >= chunk:
            click.echo("".join(parts), nl=False)
            parts = []
    parts.append("\n]")
    click.echo("".join(parts))


def _indented(item: Any) -> str:
    return "  " + json.dumps(item.as_dict(), indent=2, ensure_ascii=False).replace("\n", "\n  ")


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
