"""What every command shares: the config path and a lazily built Cabinet."""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) uses: C where available
from itertools import islice
from typing import TYPE_CHECKING, Any, Iterable

import click

from daemon.config import Config, load_config
from daemon.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from daemon.app import Cabinet


class CliState:
    def __init__(self, config_path: str | None) -> None:
        self._config_path = config_path
        self._config: Config | None = None
        self._cabinet: Cabinet | None = None
        self._engine: Engine | None = None

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
            from daemon.app import build  # imported when a command needs it: it loads every part of Cabinet

            try:
                self._cabinet = build(self.config)
            except OSError as exc:  # e.g. an unreadable data folder or key file: one line, exit 78
                raise ConfigError(f"cannot read {exc.filename or 'a file Cabinet needs'}: {exc.strerror}") from None
        return self._cabinet

    @property
    def engine(self) -> Engine:
        """The database alone, for a command that only reads (`client list`): building the whole
        Cabinet (ORM models, mail, templates, password hasher) was a third of a 100k roster's time."""
        if self._cabinet is not None:
            return self._cabinet.engine
        if self._engine is None:
            from daemon import db

            config = self.config
            if config.is_sqlite and not config.storage.data_dir.exists():  # as daemon.app.build says it
                raise ConfigError(f"data folder {config.storage.data_dir} does not exist; run `cabinet init` first")
            self._engine = db.make_engine(config.database_url)
        return self._engine

    def close(self) -> None:
        if self._cabinet is not None:
            self._cabinet.close()
        if self._engine is not None:
            self._engine.dispose()


pass_state = click.make_pass_decorator(CliState)


def print_json(items: Iterable[Any], chunk: int = 2000) -> None:
    """Print ``items`` (each through its ``as_dict()``) as one indented JSON array, streamed
    ``chunk`` items at a time: byte for byte what ``json.dumps(list, indent=2)`` gives, in flat
    memory whatever the list's length."""
    iterator = iter(items)
    print_json_chunks(iter(lambda: [_indented(item) for item in islice(iterator, chunk)], []))


def print_json_chunks(chunks: Iterable[list[str]]) -> None:
    """Print array elements, already encoded and indented (``_indented``), as one JSON array:
    a write per chunk. The first chunk is made before anything is printed, so an error (an
    unknown firm) leaves stdout empty."""
    lead = "[\n"
    for texts in chunks:
        if texts:
            click.echo(lead + ",\n".join(texts), nl=False)
            lead = ",\n"
    click.echo("[]" if lead == "[\n" else "\n]")


def _indented(item: Any) -> str:
    return "  " + pretty_json(item.as_dict(), "  ")


_SCALARS = json.JSONEncoder(ensure_ascii=False)


def pretty_json(value: Any, indent: str = "") -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)`` byte for byte, each line after the first
    prefixed with ``indent``.

    json has no C encoder for indented output, and its Python one made up most of a 100k-client
    roster's time; here the structure is laid out by hand and every string, number and key goes
    through json's own C functions (strings and nulls, most of a roster, without a call of their own)."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    inner = indent + "  "
    if kind is dict:
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            if type(key) is not str:  # keys json converts (numbers, None): rare, left to json itself
                return json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + indent)
            if isinstance(item, str):  # StrEnum too: json writes its value
                text = encode_basestring(item)
            elif item is None:
                text = "null"
            elif type(item) is int:
                text = int.__repr__(item)
            else:
                text = pretty_json(item, inner)
            lines.append(f"{inner}{encode_basestring(key)}: {text}")
        return "{\n" + ",\n".join(lines) + "\n" + indent + "}"
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + pretty_json(item, inner) for item in value) + "\n" + indent + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):  # a StrEnum
        return encode_basestring(value)
    if isinstance(value, int):  # int subclasses (IntEnum) print as numbers, as json does
        return int.__repr__(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + indent)
    return _SCALARS.encode(value)  # a float, or whatever json accepts or refuses


def counted(count: int, noun: str) -> str:
    """"1 email", "0 emails", "2 sent emails": the English form of the number, never a parenthesised "s"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
