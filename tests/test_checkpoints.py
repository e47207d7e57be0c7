"""WAL checkpoints on their own thread (daemon.checkpoints), on real SQLite files: the writer's COMMITs
never copy the WAL into the database file, the WAL stays bounded anyway, a failed checkpoint is tried
again and loses nothing, and closing leaves every row in the database file itself."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Engine

from daemon import db
from daemon.app import Cabinet
from daemon.checkpoints import Checkpointer
from tests.conftest import Env, RunningServer, wait_until

ROW = 6000  # bytes a row: an overflow page or two, so a few units fill SQLite's 1,000-page mark
HUGE = 1 << 30  # pages: a bound the thread never reaches, a limit the writer never does


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'wal.sqlite3'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    with engine.connect() as conn:  # the empty table in the database file itself, the WAL empty
        conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    yield engine
    engine.dispose()


def database_file(engine: Engine) -> Path:
    return Path(str(engine.url.database))


def write_stream(writer: db.GroupWriter, units: int, threads: int = 4, after: list[int] | None = None) -> None:
    """``units`` inserts of ``ROW`` bytes through the group writer from ``threads`` threads; ``after``
    gets the WAL file's size after each unit."""
    wal = Path(str(writer._engine.url.database) + "-wal")

    def run(count: int) -> None:
        for _ in range(count):
            with writer.core_unit() as connection:
                connection.exec_driver_sql("INSERT INTO item (body) VALUES (randomblob(?))", (ROW,))
            if after is not None:
                after.append(wal.stat().st_size)

    workers = [threading.Thread(target=run, args=(units // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def rows_in_file_alone(engine: Engine, tmp_path: Path) -> int:
    """The rows a copy of the database file holds without its WAL: what a checkpoint has put there."""
    copy = tmp_path / "copy.sqlite3"
    shutil.copyfile(database_file(engine), copy)
    with sqlite3.connect(copy) as connection:
        return int(connection.execute("SELECT count(*) FROM item").fetchone()[0])


def test_the_writers_commits_never_checkpoint(engine: Engine, tmp_path: Path) -> None:
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=HUGE, limit=HUGE)
    assert checkpoints is not None
    before = database_file(engine).stat()
    write_stream(writer, 600)  # about 1,400 pages: past SQLite's own 1,000-page mark
    with writer.core_unit() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    after = database_file(engine).stat()
    assert checkpoints.pages()[0] > 1000, "the stream did not pass SQLite's automatic checkpoint"
    # In WAL mode only a checkpoint writes the database file: it is as it was, and holds no row yet.
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert rows_in_file_alone(engine, tmp_path) == 0
    assert checkpoints.runs == checkpoints.writer_runs == 0
    writer.close()


def test_the_wal_stays_bounded_under_a_stream_of_writes(engine: Engine) -> None:
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=64)
    assert checkpoints is not None
    sizes: list[int] = []
    write_stream(writer, 800, after=sizes)
    # The writer checks after each group and checkpoints itself before the next past the limit: the
    # WAL never holds more than the limit and one group (at most 4 units of a few pages here).
    assert max(sizes) <= (checkpoints.limit + 16) * (checkpoints.page_size + 24) + 32
    assert checkpoints.runs > 0, "the thread never checkpointed"
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM item").scalar() == 800
    writer.close()


def test_the_writer_copies_what_the_thread_left_and_the_wal_starts_over(engine: Engine) -> None:
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=16, limit=HUGE)
    assert checkpoints is not None
    write_stream(writer, 4, threads=1)
    # A reader's snapshot: the thread's checkpoint cannot copy past it, as it cannot copy the pages a
    # writer adds while it runs.
    reader = sqlite3.connect(database_file(engine), isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM item").fetchone()
    write_stream(writer, 12, threads=1)
    # The thread copied what it could and left the rest to the writer.
    wait_until(lambda: checkpoints.overdue, what="the thread to checkpoint as far as the reader lets it")
    pages, copied = checkpoints.pages()
    assert copied < pages
    reader.execute("COMMIT")
    reader.close()
    write_stream(writer, 1, threads=1)
    # The writer copied the rest before that unit's group, which started the WAL over: only its pages.
    assert checkpoints.pages()[0] < 8
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM item").scalar() == 17
    writer.close()


def test_closing_checkpoints_everything_into_the_database_file(engine: Engine, tmp_path: Path) -> None:
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=HUGE, limit=HUGE)
    assert checkpoints is not None
    write_stream(writer, 40)
    assert rows_in_file_alone(engine, tmp_path) == 0  # all of it in the WAL so far
    writer.close()
    assert checkpoints.wal_size() == 0
    assert rows_in_file_alone(engine, tmp_path) == 40


def test_a_failed_checkpoint_is_logged_and_tried_again(engine: Engine, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr to make the database file unwritable (chmod does not stop root)")
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=16, limit=HUGE)
    assert checkpoints is not None
    database = database_file(engine)
    # The database file unwritable, its WAL not: commits go on, every checkpoint fails.
    try:
        subprocess.run(["chattr", "+i", str(database)], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"this file system does not support chattr +i: {exc.stderr!r}")
    try:
        with caplog.at_level(logging.WARNING, logger="daemon.checkpoints"):
            write_stream(writer, 40)
            wait_until(lambda: checkpoints.failures > 0, what="a checkpoint to fail")
        assert "WAL checkpoint failed" in caplog.text
        assert checkpoints.runs == 0
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True, capture_output=True)
    wait_until(lambda: checkpoints.runs > 0, what="the checkpoint to be tried again")
    assert rows_in_file_alone(engine, tmp_path) == 40  # every row copied once the file took writes again
    writer.close()



def test_the_checkpoints_follow_the_wal_index_sqlite_creates_again(engine: Engine) -> None:
    """SQLite deletes ``-shm`` as the last connection to the database closes, and the next connection
    creates another: the checkpoints read that one, and the WAL stays bounded."""
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=64)
    assert checkpoints is not None
    shm = Path(str(database_file(engine)) + "-shm")
    write_stream(writer, 8)
    deleted = shm.stat()
    # Every connection closed: the thread's, as after a failed checkpoint, and the pool's.
    with checkpoints._checkpointing:
        checkpoints._drop()
    engine.dispose()
    assert not shm.exists(), "SQLite kept its -shm file after its last connection closed"
    runs = checkpoints.runs
    sizes: list[int] = []
    write_stream(writer, 800, after=sizes)  # about 2,000 pages
    assert (shm.stat().st_dev, shm.stat().st_ino) != (deleted.st_dev, deleted.st_ino)
    assert max(sizes) <= (checkpoints.limit + 16) * (checkpoints.page_size + 24) + 32
    assert checkpoints.runs > runs, "the thread never checkpointed again (on a connection of its own)"
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM item").scalar() == 808
    writer.close()



def test_the_checkpoints_keep_reading_a_wal_index_deleted_under_open_connections(engine: Engine) -> None:
    """``-shm`` deleted while connections are open (an operator's ``rm``): SQLite's connections keep the
    file they mapped, and so do the checkpoints, until another file takes its name."""
    writer = db.GroupWriter(engine)
    checkpoints = writer.checkpoint_in_background(bound=64)
    assert checkpoints is not None
    write_stream(writer, 8)
    Path(str(database_file(engine)) + "-shm").unlink()
    sizes: list[int] = []
    write_stream(writer, 800, after=sizes)
    assert max(sizes) <= (checkpoints.limit + 16) * (checkpoints.page_size + 24) + 32
    assert checkpoints.runs > 0
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM item").scalar() == 808
    writer.close()


# A process that writes a row at a time through the group writer, checkpoints on their thread every
# 16 pages, and prints each row's id once its COMMIT returned (acknowledged).
WRITER_PROCESS = """
import sys
from daemon import db
writer = db.GroupWriter(db.make_engine(sys.argv[1]))
writer.checkpoint_in_background(bound=16)
number = 0
while True:
    number += 1
    with writer.core_unit() as connection:
        connection.exec_driver_sql("INSERT INTO item (id, body) VALUES (?, randomblob(6000))", (number,))
    print(number, flush=True)
"""


def test_sigkill_while_checkpointing_loses_no_acknowledged_row(engine: Engine) -> None:
    database = database_file(engine)
    empty = database.stat().st_size
    engine.dispose()
    child = subprocess.Popen([sys.executable, "-c", WRITER_PROCESS, str(engine.url)], stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).parent.parent)
    acknowledged: list[int] = []
    try:
        assert child.stdout is not None
        # Killed once checkpoints have been copying into the database file for a while.
        while len(acknowledged) < 200 or database.stat().st_size <= empty:
            line = child.stdout.readline()
            assert line, f"the writing process ended (exit {child.poll()})"
            acknowledged.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        acknowledged += [int(line) for line in child.stdout.read().split()]
    finally:
        child.kill()
        child.wait()
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in connection.execute("SELECT id FROM item")}
    assert set(acknowledged) <= stored


def test_serve_checkpoints_in_the_background_and_commands_keep_sqlites_own(
        server: RunningServer, cabinet: Cabinet, env: Env) -> None:
    writer = getattr(server.cabinet.sessions, "writer", None)
    if not env.is_sqlite:
        assert writer is None  # PostgreSQL: no group writer, nothing to checkpoint here
        return
    assert isinstance(writer._checkpoints, Checkpointer)  # Service.start took the served database's over
    with db.write_connection(server.cabinet.sessions) as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    # A command's Cabinet (built the same way, never served) keeps SQLite's automatic checkpoint.
    with db.write_connection(cabinet.sessions) as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
