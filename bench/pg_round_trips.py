"""Round trips and statements per accept on PostgreSQL, counted from libpq's own protocol trace: figures
the machine's load does not move.

Every connection Cabinet's engine opens (pooled writes and kept reads alike) is traced by libpq
(``PGconn.trace``) while the accepts run. A round trip is what the client sends before it waits for
the server: a simple ``Query``, or in the extended protocol (and psycopg's pipeline mode) a ``Sync`` or
a ``Flush`` (several sent before any answer is read are one; a ``Flush`` asking for nothing new after a
``Sync`` is none). A statement is a ``Query`` or an ``Execute``. The accepts go through the real
service (``Cabinet.accepts.accept``, as the link handler awaits it), BATCH at a time on one event loop
so that each group is one batch; the signed-in visitor's session read, which the web handler makes
before it, is not counted.

    .venv/bin/python -m bench.pg_round_trips [--url URL] [--accepts 48] [--batch 1,4,16] [--prefix NAME] [--cpu]

The database is created on the server ``--url`` names (``PREFIX_<random>``) and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import Pool

SERVER = "postgresql+psycopg://postgres@127.0.0.1:55432/postgres"
# The client messages after which libpq waits for the server's answer.
_WAITS = frozenset({"Sync", "Flush", "Query"})
_STATEMENTS = frozenset({"Execute", "Query"})
_MESSAGES = re.compile(r'\n(?=[FB]\t\d+\t)')
_MESSAGE = re.compile(r'^([FB])\t\d+\t(\w+)(?:\t (.*))?$', re.DOTALL)
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')


@dataclass
class Counts:
    """What the traced connections sent: round trips, statements and the statements by their SQL's start."""

    round_trips: int = 0
    statements: int = 0
    by_statement: Counter[str] = field(default_factory=Counter)

    def add(self, trace: str, before: str = "") -> None:
        """Count the messages of ``trace``; ``before``, what the connection sent earlier, names the statements
        psycopg prepared then."""
        prepared: dict[str, str] = {}  # psycopg prepares a query run often: its name, then Binds name it
        for text, counted in ((before, False), (trace, True)):
            pending = ""
            waiting = False  # the client sent what it waits for; the server's answer not read yet
            asked = False  # a statement was sent since the last wait
            for message in _MESSAGES.split(text):  # a statement's SQL may span lines
                found = _MESSAGE.match(message)
                if found is None:
                    continue
                if found.group(1) == "B":
                    waiting = False
                    continue
                kind, rest = found.group(2), found.group(3) or ""
                quoted = [part.replace('""', '"') for part in _QUOTED.findall(rest)]
                if kind == "Parse" and len(quoted) >= 2:
                    name, sql = quoted[0], quoted[1]
                    if name:
                        prepared[name] = sql
                    pending = sql
                elif kind == "Bind" and len(quoted) >= 2 and quoted[1]:
                    pending = prepared.get(quoted[1], quoted[1])
                if not counted:
                    continue
                if kind in _WAITS:
                    # A Sync and a Flush sent together are one wait; so is a Flush that asks for nothing new
                    # (psycopg may send one after a Sync whose answer is still on its way).
                    if not waiting and (kind != "Flush" or asked):
                        self.round_trips += 1
                    waiting, asked = True, False
                else:
                    asked = True
                if kind in _STATEMENTS:
                    self.statements += 1
                    self.by_statement[_short(quoted[0] if kind == "Query" and quoted else pending)] += 1


def _short(sql: str) -> str:
    words = sql.split()
    return " ".join(words[:3]) if words else "?"


class RoundTrips:
    """libpq's protocol trace of each PostgreSQL connection ``opener`` (an engine, or ``Pool`` for every
    pool) opens from now on; ``stop`` counts what they sent since ``start`` (connections opened before this
    is made are not traced: make it before).

    Each is traced from its opening, as psycopg prepares a statement run often (``Parse`` with a name) and
    then binds it by that name: the statement's text is read from the whole trace, the counts from what
    came after ``start``."""

    def __init__(self, opener: Engine | type[Pool]) -> None:
        self._opener = opener
        self._traced: list[tuple[Any, IO[bytes]]] = []
        self._starts: dict[int, int] = {}
        event.listen(opener, "connect", self._opened)

    def _opened(self, dbapi_connection: Any, _record: Any) -> None:
        traced = tempfile.TemporaryFile()
        self._traced.append((dbapi_connection, traced))
        self._trace(dbapi_connection, traced)

    @staticmethod
    def _trace(dbapi_connection: Any, traced: IO[bytes]) -> None:
        from psycopg import pq

        dbapi_connection.pgconn.trace(traced.fileno())
        dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def _flushed(self) -> None:
        """libpq buffers its trace: untraced, it is written out; traced again, from where it ends."""
        for connection, traced in self._traced:
            if not connection.closed:
                connection.pgconn.untrace()
                self._trace(connection, traced)

    def start(self) -> None:
        """Count from now (every connection idle)."""
        self._flushed()
        self._starts = {id(traced): os.fstat(traced.fileno()).st_size for _, traced in self._traced}

    def stop(self) -> Counts:
        """What the connections sent since ``start`` (every connection idle)."""
        self._flushed()
        counts = Counts()
        for _, traced in self._traced:
            traced.seek(0)
            whole = traced.read()
            start = self._starts.get(id(traced), 0)
            counts.add(whole[start:].decode("utf-8", "replace"), whole[:start].decode("utf-8", "replace"))
        return counts

    def close(self) -> None:
        event.remove(self._opener, "connect", self._opened)
        for connection, traced in self._traced:
            if not connection.closed:
                connection.pgconn.untrace()
            traced.close()
        self._traced.clear()


def _config(root: Path, database_url: str) -> Path:
    config = root / "cabinet.toml"
    config.write_text(
        f'[storage]\ndata_dir = "data"\ndatabase_url = "{database_url}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n[smtp]\nlisten = "127.0.0.1:0"\ndomain = "cabinet.bench.example"\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n[general]\nlog_level = "WARNING"\n',
        encoding="utf-8",
    )
    return config


def measure(database_url: str, root: Path, accepts: int, batch: int, trace: bool = True) -> tuple[Counts, float]:
    """A fresh instance on ``database_url`` (migrated), ``accepts`` invitations, accepted ``batch`` at a time
    after a first batch: what the later ones sent (``trace``; else nothing counted) and this process's CPU
    seconds for them (all its threads; the PostgreSQL backends' not included)."""
    from click.testing import CliRunner

    from bench import seed
    from daemon.app import build
    from daemon.cli import cli as cabinet_cli
    from daemon.config import load_config
    from daemon.models import Invitation
    from daemon.tokens import Purpose

    config = _config(root, database_url)
    initialised = CliRunner().invoke(cabinet_cli, ["--config", str(config), "init"])
    if initialised.exit_code != 0:
        raise RuntimeError(f"cabinet init: {initialised.output}")
    seed.seed_invitations(config, accepts)
    # Every pool's connections, the app's engine's included, from their opening.
    counter = RoundTrips(Pool) if trace else None
    app = build(load_config(config))
    try:
        user = app.roster.find_staff(seed.ACCOUNTANT).id
        with app.sessions() as s:
            tokens = [app.signer.sign(Purpose.INVITE, [invitation.id, invitation.nonce])
                      for invitation in s.query(Invitation).order_by(Invitation.id)]

        async def group(tokens: list[str]) -> None:
            results = await asyncio.gather(*(app.accepts.accept(token, user, None) for token in tokens))
            assert all(result.invitation.state == "accepted" for result in results)

        asyncio.run(group(tokens[:batch]))  # warm: the pool's and the read connections' first opening
        if counter is not None:
            counter.start()
        cpu = time.process_time()
        for start in range(batch, len(tokens), batch):
            asyncio.run(group(tokens[start:start + batch]))
        cpu = time.process_time() - cpu
        return (counter.stop() if counter is not None else Counts()), cpu
    finally:
        if counter is not None:
            counter.close()
        app.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=SERVER, help="the PostgreSQL server (a database is made on it)")
    parser.add_argument("--accepts", type=int, default=48, help="accepts counted per batch size")
    parser.add_argument("--batch", default="1,4,16", help="accepts per batch, comma-separated")
    parser.add_argument("--prefix", default="cabinet_round_trips", help="the made database's name prefix")
    parser.add_argument("--cpu", action="store_true",
                        help="untraced: this process's CPU per accept instead (alternate A/B runs: load moves it)")
    args = parser.parse_args(argv)
    server = make_url(args.url)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        for batch in (int(size) for size in args.batch.split(",")):
            name = f"{args.prefix}_{secrets.token_hex(6)}"
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            try:
                with tempfile.TemporaryDirectory() as root:
                    url = server.set(database=name).render_as_string(hide_password=False)
                    counts, cpu = measure(url, Path(root), args.accepts + batch, batch, trace=not args.cpu)
            finally:
                with admin.connect() as connection:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            batches = args.accepts // batch
            if args.cpu:
                print(f"batch of {batch}: {1000 * cpu / args.accepts:.3f} ms of this process's CPU per accept")
                continue
            print(f"batch of {batch}: {counts.round_trips / batches:.2f} round trips and "
                  f"{counts.statements / batches:.2f} statements per batch; "
                  f"{counts.round_trips / args.accepts:.2f} and {counts.statements / args.accepts:.2f} per accept")
            for sql, count in counts.by_statement.most_common():
                print(f"    {count / batches:6.2f} per batch  {sql}")
    finally:
        admin.dispose()


if __name__ == "__main__":
    main()
