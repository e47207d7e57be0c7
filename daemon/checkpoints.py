"""SQLite's WAL checkpoints on a thread of their own, out of the writer's COMMIT (`cabinet serve` only).

SQLite checkpoints by itself inside the COMMIT that takes the WAL past 1,000 pages: that COMMIT
copies the WAL's pages into the database file and fsyncs it while every write queued behind the
group writer waits. Measured in `./bench/run.sh --only accept` (300 accepts a round, 16
connections): about one group commit in 24 ran one, taking a median 13 ms (up to 165 ms) against
2.5 ms for the others.

Here the writer's connection has ``wal_autocheckpoint=0`` and, after each group, says how big the
WAL file is (a ``stat``). Past ``bound`` this thread wakes and runs a PASSIVE checkpoint on its own
connection: it copies what no reader still needs and takes no lock the writer or a reader waits for.
Once everything is copied it tries a TRUNCATE without waiting (busy_timeout 0): that holds the write
lock only to empty the file, and fails at once, to be retried, while a group or a reader is in the
WAL. An emptied file restarts from nothing, so its size is the WAL's content and the bound holds.

A writer that never pauses could keep a PASSIVE checkpoint from ever catching up. Past ``limit``
(four times the bound) the writer itself checkpoints (TRUNCATE, waiting for readers) before its next
group: SQLite's own behaviour, kept as the backstop, so the WAL stays bounded whatever the thread
manages. Readers never keep a read transaction past a turn of the loop (``daemon.reads``), so they
cannot hold a checkpoint back for long.

A checkpoint only copies committed pages; a failed one (disk full, I/O error) leaves the WAL as it was,
which SQLite reads from and recovers after a crash: it is logged and tried again. ``close`` stops the
thread and checkpoints everything (TRUNCATE), so a stopped server leaves the whole database in its file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BOUND = 4 * 1024 * 1024  # bytes of WAL file: SQLite's own 1,000 pages of 4 KiB
LIMIT_FACTOR = 4  # past this many bounds the writer checkpoints itself
RETRY = 1.0  # seconds: how often the thread looks without being woken, and waits after a failure
AGAIN = 0.05  # seconds before another try when the WAL could not be emptied (a group or reader in it)
CLOSE_WAIT_MS = 5000  # the final checkpoint waits this long for a reader to finish

# Set on a pooled connection once it has had autocheckpoint turned off (the pool keeps it per connection).
ADOPTED = "cabinet_background_checkpoints"


class Checkpointer:
    """One database's checkpoints on one thread; the group writer owns it (``GroupWriter.checkpoint_in_background``)."""

    def __init__(self, database: str, bound: int = BOUND, limit: int | None = None) -> None:
        self.database = database
        self._wal = Path(database + "-wal")
        self.bound = bound
        self.limit = limit if limit is not None else bound * LIMIT_FACTOR
        self.overdue = False  # the WAL passed ``limit``: the writer checkpoints before its next group
        self.runs = 0  # checkpoints the thread ran
        self.emptied = 0  # of which emptied the WAL file
        self.writer_runs = 0  # checkpoints the writer ran (the thread fell behind)
        self.failures = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connection: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="cabinet-checkpoints", daemon=True)
        self._thread.start()

    def wal_size(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:  # none yet; or unreadable, which must never fail the writer's group that asks
            return 0

    def adopt(self, connection: Any) -> None:
        """Turn off SQLite's own checkpoints on a pooled connection the writer took (once per connection)."""
        record = connection.connection
        if not record.info.get(ADOPTED):
            record.driver_connection.execute("PRAGMA wal_autocheckpoint=0")
            record.info[ADOPTED] = True

    def committed(self) -> None:
        """After a group's COMMIT (the writer's thread): wake the thread past the bound; past the limit,
        have the writer checkpoint before its next group."""
        size = self.wal_size()
        if size >= self.bound:
            self._wake.set()
            self.overdue = size >= self.limit

    def catch_up(self, connection: Any) -> None:
        """The writer's backstop, between groups on its own connection (no transaction open): copy
        everything and empty the WAL, waiting for readers (its busy_timeout)."""
        self.overdue = False
        try:
            connection.connection.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self.writer_runs += 1
        except sqlite3.Error as exc:
            self.failures += 1
            log.warning("WAL checkpoint by the writer failed (tried again past the limit): %s", exc)

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            # mode=rw: never create a database; timeout=0: a checkpoint that would wait gives up instead.
            connection = sqlite3.connect(f"file:{self.database}?mode=rw", uri=True, timeout=0,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA synchronous=FULL")  # the database file is fsynced after each checkpoint
            self._connection = connection
        return self._connection

    def _checkpoint(self) -> bool:
        """PASSIVE, then TRUNCATE if everything was copied; whether the WAL file was emptied."""
        connection = self._open()
        busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.runs += 1
        if busy or frames != copied:
            return False
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            return False
        self.emptied += 1
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(RETRY)
            self._wake.clear()
            if self._stopping.is_set() or self.wal_size() < self.bound:
                continue
            try:
                if not self._checkpoint():
                    self._stopping.wait(AGAIN)
            except sqlite3.Error as exc:
                self.failures += 1
                log.warning("WAL checkpoint failed (tried again in %.0f s): %s", RETRY, exc)
                self._drop()
                self._stopping.wait(RETRY)

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
            self._connection = None

    def close(self) -> None:
        """Stop the thread, then checkpoint everything (the writer has stopped writing)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        try:
            connection = self._open()
            connection.execute(f"PRAGMA busy_timeout={CLOSE_WAIT_MS}")
            busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("final WAL checkpoint: %s of %s pages copied, a reader still in the WAL", copied, frames)
        except sqlite3.Error as exc:
            # The WAL stays as it is: SQLite reads it, and checkpoints it when the database is next opened.
            log.warning("final WAL checkpoint failed: %s", exc)
        finally:
            self._drop()
