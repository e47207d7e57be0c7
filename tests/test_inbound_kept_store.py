"""The inbound store on PostgreSQL: a batch of DATAs is ONE statement and one round trip (a multi-row
INSERT in autocommit on a kept connection, ``daemon.kept_writes``), counted in libpq's own trace; the same
bytes stored twice, in one batch or two, get the first copy's id; a kept connection the server dropped
while idle, or that is cut after its INSERT committed but before the answer came, loses nothing
acknowledged and stores nothing twice. The duplicate test runs on SQLite too (its store is unchanged)."""

from __future__ import annotations

import os
import smtplib
import socket
import tempfile
import threading
from collections import Counter
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any, Iterator

import pytest
from psycopg import pq
from sqlalchemy import Engine, event, make_url

from daemon.app import Cabinet, build
from daemon.config import load_config
from bench import roundtrips
from tests.conftest import Cli, Env, FakeClock, wait_until
from tests.inbound_helpers import reply

ACCOUNTANT = "marie@tremblay.example"
FIRM_INBOX = "bureau@tremblay.example"
REPLY_TO = "reply+anything@cabinet.example"  # the store keeps any envelope: RCPT judged it before


def raws(count: int, tag: str) -> list[bytes]:
    return [reply(REPLY_TO, ACCOUNTANT, f"{tag} {n}").as_bytes(policy=SMTP_POLICY) for n in range(count)]


def postgresql_only(env: Env) -> None:
    if env.is_sqlite:
        pytest.skip("PostgreSQL's kept autocommit store (CABINET_TEST_DATABASE_URL)")


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[inbound]\nfirm_addresses = ["{FIRM_INBOX}"]\n')  # RCPT accepts it: the listener stores
    return env


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


class Traced:
    """libpq's protocol trace of every connection ``engine`` opens from now on (its pool's and the kept
    ones), counted by ``bench.roundtrips``; ``counts()`` flushes what libpq buffered first."""

    def __init__(self, engine: Engine, folder: Path) -> None:
        self._folder = folder
        self._connections: list[Any] = []
        self._files: list[int] = []
        event.listen(engine, "connect", self._connected)
        engine.dispose()  # the connections open now are opened again, traced (the kept ones with them)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        self._connections.append(dbapi_connection)
        self._trace(dbapi_connection)

    def _trace(self, dbapi_connection: Any) -> None:
        fd, _ = tempfile.mkstemp(prefix="trace-", dir=self._folder)
        self._files.append(fd)
        dbapi_connection.pgconn.trace(fd)
        dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def counts(self) -> Counter[str]:
        for dbapi_connection in self._connections:
            if not dbapi_connection.closed:
                dbapi_connection.pgconn.untrace()  # libpq flushes its trace here
                self._trace(dbapi_connection)
        return roundtrips.counted(self._folder)

    def close(self) -> None:
        for dbapi_connection in self._connections:
            if not dbapi_connection.closed:
                dbapi_connection.pgconn.untrace()
        for fd in self._files:
            os.close(fd)


def test_a_store_batch_is_one_statement_and_one_round_trip(cabinet: Cabinet, env: Env, tmp_path: Path) -> None:
    postgresql_only(env)
    traced = Traced(cabinet.engine, tmp_path)
    try:
        cabinet.inbound.store_many([(ACCOUNTANT, [REPLY_TO], raw) for raw in raws(2, "warm")])  # connects
        before = traced.counts()
        batch = raws(5, "batch")
        ids = cabinet.inbound.store_many([(ACCOUNTANT, [REPLY_TO], raw) for raw in batch])
        after = traced.counts()
    finally:
        traced.close()
    spent = {key: after[key] - before[key] for key in ("round_trips", "statements", "INSERT INTO inbound", "begin")}
    # Five messages: one INSERT, its own transaction (no BEGIN, no COMMIT), one round trip.
    assert spent == {"round_trips": 1, "statements": 1, "INSERT INTO inbound": 1, "begin": 0}
    # Committed when store_many returned: another connection sees every row, each under its id.
    assert sorted(env.sql("SELECT id FROM inbound WHERE id >= :first", first=min(ids))) == [(i,) for i in sorted(ids)]
    assert len(set(ids)) == 5


def test_the_same_bytes_get_the_first_copys_id_in_a_batch_and_across_batches(cabinet: Cabinet, env: Env) -> None:
    first, second, third = raws(3, "note")
    ids = cabinet.inbound.store_many([(ACCOUNTANT, [REPLY_TO], raw) for raw in (first, second, first)])
    assert ids[0] == ids[2] and ids[0] != ids[1]
    # The sender's retry after a lost 250, in a later batch, beside a new message; then on its own.
    again = cabinet.inbound.store_many([(ACCOUNTANT, [REPLY_TO], raw) for raw in (second, third, first)])
    assert again[0] == ids[1] and again[2] == ids[0] and again[1] not in ids
    assert cabinet.inbound.store(ACCOUNTANT, [REPLY_TO], third) == again[1]
    assert env.sql("SELECT count(*) FROM inbound") == [(3,)]


def terminate_other_backends(env: Env) -> None:
    """``pg_terminate_backend`` for every other session on the test's database (a server restart, for
    Cabinet's connections), waited for until they are gone (new ones may open meanwhile)."""
    pids = [pid for pid, in env.sql("SELECT pid FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    assert pids  # Cabinet's, the kept store connection among them
    env.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(:pids)",
            pids=pids)
    wait_until(lambda: env.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)", pids=pids) == [(0,)],
               what="the terminated backends to be gone")


def test_a_store_over_smtp_after_the_server_dropped_the_kept_connection(server: Any, env: Env) -> None:
    """Over the real listener: the kept connection is terminated while idle; the next DATA is answered
    250 (stored on a new connection), and every message acknowledged before is there."""
    postgresql_only(env)
    sent = raws(4, "dropped")
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        for raw in sent[:2]:
            assert smtp.sendmail(ACCOUNTANT, [FIRM_INBOX], raw) == {}
    terminate_other_backends(env)
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        for raw in sent[2:]:
            assert smtp.sendmail(ACCOUNTANT, [FIRM_INBOX], raw) == {}
    assert env.sql("SELECT count(*) FROM inbound") == [(4,)]


class CuttingRelay:
    """A TCP relay between Cabinet and the PostgreSQL server that, once ``armed``, passes the next
    client packet holding ``marker`` to the server and then, instead of passing the server's answer
    back, closes both sides: a connection lost after the server did the work, before the client heard."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self._target = target
        self._marker = marker
        self.armed = threading.Event()
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            cutting = threading.Event()  # this pair's answer is to be dropped
            threading.Thread(target=self._pump, args=(client, upstream, cutting, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, cutting, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, cutting: threading.Event, to_server: bool) -> None:
        try:
            while data := source.recv(65536):
                if to_server and self.armed.is_set() and self._marker in data:
                    self.armed.clear()
                    cutting.set()
                elif not to_server and cutting.is_set():  # the answer: dropped, and the connection with it
                    self.cut.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self._listener.close()


def test_a_store_whose_answer_was_lost_runs_again_and_stores_nothing_twice(env: Env, cli: Cli, clock: FakeClock,
                                                                           tmp_path: Path) -> None:
    """The kept connection is cut after the INSERT committed, before its answer: the store runs once
    more on a new connection, the INSERT finds the rows there (ON CONFLICT), and each message gets the
    id of its one row."""
    postgresql_only(env)
    url = make_url(env.database_url)
    relay = CuttingRelay((url.host or "127.0.0.1", url.port or 5432), b"INSERT INTO inbound")
    config = tmp_path / "relayed.toml"
    config.write_text(env.config_path.read_text().replace(
        env.database_url, url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)))
    cabinet = build(load_config(config), clock=clock)
    try:
        stored = [cabinet.inbound.store(ACCOUNTANT, [REPLY_TO], raws(1, "first")[0])]  # the kept connection opens
        # A message alone (no batch to fall back from: without the second run it would be a 451), then a batch.
        for batch in (raws(1, "cut alone"), raws(3, "cut batch")):
            relay.cut.clear()
            relay.armed.set()
            ids = cabinet.inbound.store_many([(ACCOUNTANT, [REPLY_TO], raw) for raw in batch])
            assert relay.cut.is_set()  # the first run's answer never came
            assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(batch)
            stored.extend(ids)
    finally:
        cabinet.close()
        relay.close()
    # One row per message, each under the id its store returned.
    assert sorted(row[0] for row in env.sql("SELECT id FROM inbound")) == sorted(stored) and len(set(stored)) == 5
