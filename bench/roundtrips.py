"""Round trips and statements a server process sends PostgreSQL, counted from libpq's own protocol trace:
figures the machine's load does not move.

``PRELUDE`` is Python run first in the served process (``python -c PRELUDE + …``): every connection any
engine opens (pool and kept connections alike: a pool ``connect`` event, before the pool hands it out)
writes libpq's trace of the messages it sends and receives to a file of its own in ``$CABINET_PG_TRACE``.
``counted(folder)`` reads them once the process has ended (its trace buffers flushed at exit):

- a round trip is one ``ReadyForQuery`` the server sent: the client sent a ``Sync`` (the extended
  protocol: Parse/Bind/Execute…) or a simple ``Query`` and waited for the answer, whatever it held;
- a statement is one ``Execute`` or ``Query`` the client sent (``BEGIN`` and ``COMMIT`` included, and
  counted apart too);
- each statement is also counted under its SQL's first three words (``INSERT INTO inbound``), read from
  the ``Query``, or from the ``Parse`` of the statement its ``Bind`` names (psycopg prepares a statement
  it ran often, then binds it by name).

The difference of two runs' counts (one with more work than the other) is that work's, without the start-up's.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

TRACE_FOLDER = "CABINET_PG_TRACE"

# Each connection's trace file is opened with os.open and left open for the process's life: libpq holds
# a FILE* on its descriptor, which a Python file object would close when collected (and the number then
# be reused by another file).
PRELUDE = (
    "import os, tempfile\n"
    "from psycopg import pq\n"
    "from sqlalchemy import event\n"
    "from sqlalchemy.engine import Engine\n"
    "def _traced(dbapi_connection, _record):\n"
    f"    fd, _ = tempfile.mkstemp(prefix='trace-', dir=os.environ[{TRACE_FOLDER!r}])\n"
    "    dbapi_connection.pgconn.trace(fd)\n"
    "    dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)\n"
    "event.listen(Engine, 'connect', _traced)\n"
)

_LINE = re.compile(rb'^([FB])\t\d+\t(\w+)(?:\t (.*))?$', re.M)
_NAMED = re.compile(rb'"([^"]*)" "(.*)')  # Parse's statement and SQL, Bind's portal and statement
_WORDS = 3


def _head(sql: bytes) -> str:
    return " ".join(sql.decode(errors="replace").split()[:_WORDS])


def counted(folder: Path) -> Counter[str]:
    """``round_trips``, ``statements``, ``begin``, ``commit``, ``connections`` and each statement's count
    under its SQL's first words, over every trace in ``folder``."""
    found: Counter[str] = Counter()
    for trace in folder.glob("trace-*"):
        found["connections"] += 1
        parsed: dict[bytes, str] = {}  # statement name ("" the unnamed one) -> its SQL's first words
        bound = ""
        for side, message, rest in _LINE.findall(trace.read_bytes()):
            if side == b"B":
                if message == b"ReadyForQuery":
                    found["round_trips"] += 1
                continue
            if message == b"Parse" or message == b"Bind":
                named = _NAMED.match(rest)
                assert named is not None, rest[:200]
                if message == b"Parse":
                    parsed[named[1]] = _head(named[2])
                else:
                    bound = parsed[named[2].partition(b'"')[0]]
            elif message == b"Execute":
                found["statements"] += 1
                found[bound] += 1
            elif message == b"Query":
                found["statements"] += 1
                sql = rest.strip(b'"')
                found[_head(sql)] += 1
                if sql in (b"BEGIN", b"COMMIT"):
                    found[sql.decode().lower()] += 1
    return found
