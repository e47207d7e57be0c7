"""Round trips and statements a server process sends PostgreSQL, counted from libpq's own protocol trace:
figures the machine's load does not move.

``PRELUDE`` is Python run first in the served process (``python -c PRELUDE + …``): every connection any
engine opens (pool and kept connections alike: a pool ``connect`` event, before the pool hands it out)
writes libpq's trace of the messages it sends and receives to a file of its own in ``$CABINET_PG_TRACE``.
``counted(folder)`` reads them once the process has ended (its trace buffers flushed at exit):

- round trips and statements as ``bench.pg_round_trips.Counts`` reads them from a trace (one parser
  for both counters): a round trip is what the client sends before it waits for the server (a simple
  ``Query``, or a ``Sync``/``Flush`` in the extended protocol and psycopg's pipeline mode), a statement
  one ``Execute`` or ``Query`` (``BEGIN`` and ``COMMIT`` included, and counted apart too);
- each statement is also counted under its SQL's first three words (``INSERT INTO inbound``).

The difference of two runs' counts (one with more work than the other) is that work's, without the start-up's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.pg_round_trips import Counts

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


def counted(folder: Path) -> Counter[str]:
    """``round_trips``, ``statements``, ``begin``, ``commit``, ``connections`` and each statement's count
    under its SQL's first words, over every trace in ``folder``."""
    found: Counter[str] = Counter()
    for trace in folder.glob("trace-*"):
        found["connections"] += 1
        counts = Counts()
        counts.add(trace.read_bytes().decode(errors="replace"))
        found["round_trips"] += counts.round_trips
        found["statements"] += counts.statements
        found.update(counts.by_statement)
        found["begin"] += counts.by_statement["BEGIN"]
        found["commit"] += counts.by_statement["COMMIT"]
    return found
