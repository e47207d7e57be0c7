"""PostgreSQL's pooled connections, on checkout (daemon.db._postgresql_alive): a healthy one costs no
round trip, and one whose backend the server ended is replaced before anybody uses it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from daemon.db import make_engine
from tests.conftest import Env, wait_until


@pytest.fixture
def engine(env: Env) -> Iterator[Engine]:
    if env.is_sqlite:
        pytest.skip("PostgreSQL's pool is the subject")
    built = make_engine(env.database_url)
    yield built
    built.dispose()


def _backend(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _sent_on_checkout(engine: Engine) -> str:
    """What the client sends the server (libpq's trace, "F" lines) while a pooled connection is checked
    out and returned unused."""
    raw = engine.raw_connection()
    pgconn: Any = raw.dbapi_connection.pgconn  # type: ignore[union-attr]
    raw.close()  # back to the pool, traced from here on
    with tempfile.TemporaryFile() as trace:
        pgconn.trace(trace.fileno())
        try:
            with engine.connect():
                pass
        finally:
            pgconn.untrace()
        trace.seek(0)
        return "".join(line for line in trace.read().decode().splitlines(keepends=True) if "\tF\t" in line)


def test_a_healthy_pooled_connection_is_checked_out_without_a_round_trip(engine: Engine) -> None:
    _backend(engine)  # one connection opened, used and pooled
    assert engine.pool.checkedin() == 1
    assert _sent_on_checkout(engine) == ""  # SQLAlchemy's pre-ping sent a query here


def test_a_pooled_connection_whose_backend_ended_is_replaced_on_checkout(engine: Engine, env: Env) -> None:
    before = _backend(engine)
    # An administrator (or a restart, or an idle timeout) ends the pooled connection's backend.
    assert env.sql("SELECT pg_terminate_backend(:pid)", pid=before) == [(True,)]
    wait_until(lambda: env.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", pid=before) == [(0,)],
               what="the backend to end")
    # The next checkout finds the server's goodbye on the socket and opens another: the caller's
    # statement runs, it does not fail on the lost connection.
    after = _backend(engine)
    assert after != before
