"""PostgreSQL connections kept in autocommit for a hot write that is one statement (the inbound store).

A store through the pool (``daemon.db.write_connection``) was BEGIN, the INSERT and COMMIT: three round
trips, plus SQLAlchemy's execution context around the INSERT. One statement on an autocommit connection
is its own transaction, committed (durable, with the server's ``synchronous_commit``) when its answer
comes back: one round trip, and the caller answers the SMTP client only after it.

The connections are kept as a page's reads keep theirs (``daemon.reads.ReadConnections``, a set of their
own: a store never waits behind a read): outside the pool, in autocommit, taken and given back by any
thread, dropped with the engine. A statement that finds its connection lost (a server restart, an idle
timeout, a terminated backend) drops every kept one and runs once more on a fresh connection. That is
safe only for a statement whose second run leaves what the first did (an ``INSERT … ON CONFLICT DO
NOTHING`` whose caller reads its rows back by key): a lost answer does not say whether it committed. A
failure on the fresh connection is the caller's (the SMTP client is answered 451 and sends again).

Errors are SQLAlchemy's (``DBAPIError``), as ``Connection.execute`` raises them; the engine's
``before_cursor_execute`` listeners hear of each statement (tests count with them).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from daemon.reads import ReadConnections

# Idle connections kept: the SMTP listener writes one store at a time (``mailer.recorder.BatchRecorder``,
# one writer); a second for a store from elsewhere at the same moment (a command, another thread).
KEPT = 2


class KeptWrites:
    """``run(sql, parameters)``: one statement that returns rows, its own transaction, on a kept
    autocommit connection."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("kept autocommit writes are PostgreSQL's (SQLite writes through its group writer)")
        self.engine = engine
        self.dialect = engine.dialect
        self._connections = ReadConnections(engine, keep=KEPT)

    def run(self, sql: str, parameters: Any) -> list[Any]:
        """``sql`` (the driver's own SQL and parameters) as its own transaction: committed when this
        returns; its rows. Run a second time when its connection is found lost during it (see the
        module's docstring: for a statement that may run twice)."""
        return self._connections.execute(sql, parameters, None)
