"""SQLite's WAL checkpoints on a thread of their own, out of the writer's COMMIT (`cabinet serve` only).

SQLite checkpoints by itself inside the COMMIT that takes the WAL past 1,000 pages: that COMMIT
copies the WAL's pages into the database file and fsyncs it while every write queued behind the
group writer waits. Measured in `./bench/run.sh --only accept` (300 accepts a round, 16
connections, ten runs): 6-7 of a run's ~145 group commits ran one, a median 11 ms (up to 165 ms)
against 2.7 ms for all of them.

Here the writer's connections have ``wal_autocheckpoint=0``. After each group the writer reads how far
the WAL goes and how much of it is copied (the wal-index header, below) and, ``bound`` pages past the
copied mark, wakes this thread, which runs a PASSIVE checkpoint on its own connection: it copies what
no reader still needs and takes no lock the writer or a reader waits for. Once everything is copied,
the writer's next transaction starts the WAL over from its beginning (SQLite does that), so the file
is reused, not grown: its writes stay overwrites, whose fsync is cheaper than an append's. (An earlier
version emptied the file after each checkpoint, TRUNCATE: every commit then appended to it.)

The writer keeps adding pages while the thread copies, and the WAL starts over only if none is left
when a transaction begins. So when the thread finishes with pages left, the writer copies those (a
group's or two, where SQLite's own checkpoint copied a thousand) before its next group. (Having
the thread chase them after each commit instead ran up to 360 checkpoints, two fsyncs each, where
SQLite's own ran 22.) Past ``limit`` pages (four bounds), whatever the thread manages, the writer
copies what is left too: the WAL stays bounded. Its file is cut back to the limit when it starts
over after a spike (``journal_size_limit``). Readers never keep a read transaction past a turn of
the loop (``daemon.reads``), so they cannot hold a checkpoint back for long.

A checkpoint only copies committed pages; a failed one (disk full, I/O error) leaves the WAL as it
was, which SQLite reads from and recovers after a crash: it is logged and tried again. ``close`` stops
the thread and checkpoints everything (TRUNCATE), so a stopped server leaves the whole database in
its file.

The wal-index header is read from a kept descriptor on the ``-shm`` file. SQLite deletes that file
when the last connection to the database closes (the thread's own is closed after a failed
checkpoint; the pool's may all be) and the next connection creates another: a descriptor kept on the
deleted one would read the same counts for ever, the thread would never be woken and the WAL would
grow without bound. So each read first checks that the path still names the kept file (a ``stat``:
the read went from 0.7 to 2.4 µs, once per group's COMMIT of accepts of 1-2 ms of CPU each) and, when
another has taken its place, reads that one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BOUND = 1000  # pages in the WAL not yet copied that wake the thread: SQLite's own automatic mark
LIMIT_FACTOR = 4  # pages in the WAL, in bounds, past which the writer checkpoints itself
RETRY = 1.0  # seconds: how often the thread looks without being woken, and waits after a failure
CLOSE_WAIT_MS = 5000  # the final checkpoint waits this long for a reader to finish
FRAME_HEADER = 24  # bytes before each page in the WAL file (https://www.sqlite.org/fileformat.html)

# The wal-index header at the start of the -shm file (https://www.sqlite.org/walformat.html, 2.2.1),
# in the machine's byte order: mxFrame, the WAL's last valid page, at byte 16; nBackfill, the last
# page copied into the database file, at byte 96. Read without a lock it may be torn mid-update:
# it only decides when to wake the thread, never what a checkpoint does.
WAL_INDEX = struct.Struct("=16xI76xI")

# Set on a pooled connection once the writer has taken it over (the pool keeps it per connection).
ADOPTED = "cabinet_background_checkpoints"


def _identity(status: os.stat_result) -> tuple[int, int]:
    """Which file: a deleted file's inode is not reused while a descriptor still holds it."""
    return status.st_dev, status.st_ino


class Checkpointer:
    """One database's checkpoints on one thread; the group writer owns it (``GroupWriter.checkpoint_in_background``)."""

    def __init__(self, database: str, bound: int = BOUND, limit: int | None = None) -> None:
        self.database = database
        self._wal = Path(database + "-wal")
        self.bound = bound
        self.limit = limit if limit is not None else bound * LIMIT_FACTOR
        self.overdue = False  # the WAL passed ``limit``: the writer checkpoints before its next group
        self.runs = 0  # checkpoints the thread ran
        self.writer_runs = 0  # checkpoints the writer ran (the thread fell behind)
        self.failures = 0
        self._checkpointing = threading.Lock()  # one checkpoint at a time here: SQLite would say "busy"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connection: sqlite3.Connection | None = self._open()
        self.page_size = int(self._connection.execute("PRAGMA page_size").fetchone()[0])
        # Opened once the connection has read the database, which makes SQLite create the file.
        self._shm = database + "-shm"
        self._index = os.open(self._shm, os.O_RDONLY)
        self._index_file = _identity(os.fstat(self._index))
        self._thread = threading.Thread(target=self._run, name="cabinet-checkpoints", daemon=True)
        self._thread.start()

    def pages(self) -> tuple[int, int]:
        """The WAL's pages and how many of them are copied into the database file."""
        try:
            self._follow_index()
            return WAL_INDEX.unpack(os.pread(self._index, WAL_INDEX.size, 0))
        except (OSError, struct.error):  # must never fail the writer's group that asks
            return 0, 0

    def _follow_index(self) -> None:
        """Keep the descriptor on the ``-shm`` file the path names now: SQLite deleted the kept one and
        created another once every connection had closed. Without a file there, the kept one is read:
        SQLite's open connections read it too (between its deletion and the next connection's file, or
        after an ``rm`` of it under them)."""
        try:
            named = _identity(os.stat(self._shm))
        except FileNotFoundError:
            return
        if named == self._index_file:
            return
        fresh = os.open(self._shm, os.O_RDONLY)
        try:
            # Onto the kept number: a read on the other thread (writer or checkpoints) meanwhile reads the
            # old file or the new one, never a descriptor closed under it or reused for another file.
            os.dup2(fresh, self._index, inheritable=False)
            self._index_file = _identity(os.fstat(self._index))
        finally:
            os.close(fresh)

    def wal_size(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:
            return 0

    def adopt(self, connection: Any) -> None:
        """Turn off SQLite's own checkpoints on a pooled connection the writer took (once per connection)."""
        record = connection.connection
        if not record.info.get(ADOPTED):
            driver = record.driver_connection
            driver.execute("PRAGMA wal_autocheckpoint=0")
            driver.execute(f"PRAGMA journal_size_limit={self.limit * (self.page_size + FRAME_HEADER)}")
            record.info[ADOPTED] = True

    def due(self, pages: int, copied: int) -> bool:
        """Whether the thread has work: ``bound`` pages not yet copied."""
        return pages - copied >= self.bound

    def committed(self) -> None:
        """After a group's COMMIT (the writer's thread): wake the thread when it has work; past the limit,
        have the writer checkpoint before its next group."""
        pages, copied = self.pages()
        if self.due(pages, copied):
            self._wake.set()
        if pages >= self.limit:
            self.overdue = True

    def catch_up(self, connection: Any) -> None:
        """Between groups on the writer's own connection (no transaction open): copy what is left, after
        the thread's checkpoint if one is running; the writer's next BEGIN then starts the WAL over."""
        self.overdue = False
        with self._checkpointing:
            try:
                connection.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.writer_runs += 1
            except sqlite3.Error as exc:
                self.failures += 1
                log.warning("WAL checkpoint by the writer failed (tried again past the limit): %s", exc)

    def _open(self) -> sqlite3.Connection:
        # mode=rw: never create a database; timeout=0: a checkpoint never waits, it copies what it can.
        connection = sqlite3.connect(f"file:{self.database}?mode=rw", uri=True, timeout=0,
                                     isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA synchronous=FULL")  # the database file is fsynced after each checkpoint
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return connection

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(RETRY)
            self._wake.clear()
            if self._stopping.is_set() or not self.due(*self.pages()):
                continue
            try:
                with self._checkpointing:
                    if self._connection is None:
                        self._connection = self._open()
                    self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                # The writer added pages while this copied (the checkpoint's own counts stop where it
                # began), or a reader still needs some: the writer copies that remainder before its next
                # group, so that the WAL starts over.
                pages, copied = self.pages()
                self.overdue = copied < pages
            except sqlite3.Error as exc:
                self.failures += 1
                log.warning("WAL checkpoint failed (tried again in %.0f s): %s", RETRY, exc)
                self._drop()  # a connection that failed may stay failed (an I/O error): the next opens afresh
                self._stopping.wait(RETRY)

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
            self._connection = None

    def close(self) -> None:
        """Stop the thread, then checkpoint everything and empty the WAL (the writer has stopped writing)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        try:
            if self._connection is None:
                self._connection = self._open()
            self._connection.execute(f"PRAGMA busy_timeout={CLOSE_WAIT_MS}")
            busy, pages, copied = self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("final WAL checkpoint: %s of %s pages copied, a reader still in the WAL", copied, pages)
        except sqlite3.Error as exc:
            # The WAL stays as it is: SQLite reads it, and checkpoints it when the database is next opened.
            log.warning("final WAL checkpoint failed: %s", exc)
        finally:
            self._drop()
            os.close(self._index)
            self._index = -1  # a read now fails (0, 0) and never puts a file on a number reused since
