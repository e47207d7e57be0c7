"""SQLite's single writer with group commit (daemon.db.GroupWriter), on a real
SQLite file: many callers, fewer commits, and each caller its own outcome."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError

from daemon import db


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'group.sqlite3'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
            "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        conn.exec_driver_sql("INSERT INTO parent (id) VALUES (1)")
    yield engine
    engine.dispose()


def commits_counted(engine: Engine) -> list[int]:
    counter = [0]

    def on_commit(conn: Any) -> None:
        counter[0] += 1

    event.listen(engine, "commit", on_commit)
    return counter


def rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT id FROM child ORDER BY id")]


# A group's age limit for the tests whose first unit holds its group open until a second one queues: the
# writer's 50 ms (``GroupWriter``'s max_age) would close the group by age when the second thread is slow to
# start on a busy machine, and the test would see two groups where it arranged one.
STAY_OPEN = 3600.0


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def insert_child(sessions: Any, row_id: int, background: bool, order: list[str], name: str) -> None:
    """A write unit inserting child ``row_id``; ``name`` noted in ``order`` while it holds the writer."""
    with db.write_transaction(sessions, background=background) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (:id, 1)"), {"id": row_id})
        order.append(name)


def test_concurrent_writers_all_commit_in_fewer_groups(engine: Engine) -> None:
    sessions = db.make_sessionmaker(engine)
    commits = commits_counted(engine)
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(25):
                with db.write_transaction(sessions) as s:
                    s.execute(text("INSERT INTO child (id, parent_id) VALUES (:id, 1)"), {"id": base + i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n * 1000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.close_sessions(sessions)
    assert errors == []
    assert len(rows(engine)) == 200
    # Every caller returned after a commit, and commits were shared.
    assert 1 <= commits[0] <= 200
    print(f"200 write transactions in {commits[0]} commits")


def test_failing_unit_rolls_back_alone(engine: Engine) -> None:
    sessions = db.make_sessionmaker(engine)
    with db.write_transaction(sessions) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (1, 1)"))
    with pytest.raises(ZeroDivisionError):
        with db.write_transaction(sessions) as s:
            s.execute(text("INSERT INTO child (id, parent_id) VALUES (2, 1)"))
            1 / 0
    with db.write_transaction(sessions) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (3, 1)"))
    db.close_sessions(sessions)
    assert rows(engine) == [1, 3]


def test_failed_group_commit_fails_every_member(engine: Engine) -> None:
    """A COMMIT that fails (here a deferred foreign key, as a full disk would)
    fails every unit of its group: nobody is told "done" for lost work."""
    sessions = db.make_sessionmaker(engine)
    writer = sessions.writer  # type: ignore[attr-defined]
    writer._max_age = STAY_OPEN
    outcomes: dict[str, str] = {}
    first_inside = threading.Event()

    def bad() -> None:
        try:
            with db.write_transaction(sessions) as s:
                s.execute(text("INSERT INTO child (id, parent_id) VALUES (10, 999)"))  # checked at COMMIT
                first_inside.set()
                wait_for(lambda: writer._waiting > 0, "the second unit to queue behind the first")
            outcomes["bad"] = "ok"
        except IntegrityError:
            outcomes["bad"] = "failed"

    def good() -> None:
        first_inside.wait()
        try:
            with db.write_transaction(sessions) as s:
                s.execute(text("INSERT INTO child (id, parent_id) VALUES (11, 1)"))
            outcomes["good"] = "ok"
        except IntegrityError:
            outcomes["good"] = "failed"

    threads = [threading.Thread(target=bad), threading.Thread(target=good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == {"bad": "failed", "good": "failed"}
    assert rows(engine) == []
    # The writer recovers: the next unit commits on its own.
    with db.write_transaction(sessions) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (12, 1)"))
    db.close_sessions(sessions)
    assert rows(engine) == [12]


def test_nested_write_transaction_is_refused_not_deadlocked(engine: Engine) -> None:
    sessions = db.make_sessionmaker(engine)
    with pytest.raises(RuntimeError, match="inside another"):
        with db.write_transaction(sessions):
            with db.write_transaction(sessions):
                pass
    db.close_sessions(sessions)


def test_a_background_unit_gives_way_to_a_waiting_foreground_one(engine: Engine) -> None:
    """Inbound processing (background) never takes the writer ahead of a store (foreground) that waits,
    and a long background unit is told that one waits (``writes_waiting``) so that it can end early."""
    sessions = db.make_sessionmaker(engine)
    writer = sessions.writer  # type: ignore[attr-defined]
    writer.max_give_way = None  # gives way for as long as the test takes (a busy machine may take seconds)
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with db.write_transaction(sessions, background=True) as s:
            s.execute(text("INSERT INTO child (id, parent_id) VALUES (1, 1)"))
            holding.set()
            release.wait()
            # What processing checks between messages: a store waits behind this unit.
            order.append(f"told: {db.writes_waiting(sessions)}")

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    holding.wait()
    assert not db.writes_waiting(sessions)
    threads.append(threading.Thread(target=insert_child, args=(sessions, 2, False, order, "store")))
    threads[-1].start()
    wait_for(lambda: db.writes_waiting(sessions), "the store to queue")
    threads.append(threading.Thread(target=insert_child, args=(sessions, 3, True, order, "processing")))
    threads[-1].start()
    # The background unit waits for the store to go first, not for the lock beside it.
    wait_for(lambda: len(writer._queue._waiters) == 1, "the background unit to wait its turn")
    release.set()
    for thread in threads:
        thread.join()
    db.close_sessions(sessions)
    assert order == ["told: True", "store", "processing"]
    assert rows(engine) == [1, 2, 3]
    assert not db.writes_waiting(sessions)


def test_a_background_unit_gives_way_for_a_while_not_for_ever(engine: Engine) -> None:
    """Under foreground units that never stop queueing (here: one that stays queued), a background unit
    (an outbox "sent" mark, whose lease runs out) stops giving way after ``max_give_way`` seconds and
    queues for the lock with them: late, never starved."""
    sessions = db.make_sessionmaker(engine)
    writer = sessions.writer  # type: ignore[attr-defined]
    writer.max_give_way = 0.2
    done: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with db.write_transaction(sessions) as s:
            s.execute(text("INSERT INTO child (id, parent_id) VALUES (1, 1)"))
            holding.set()
            release.wait()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    holding.wait()
    threads.append(threading.Thread(target=insert_child, args=(sessions, 2, False, done, "store")))
    threads[-1].start()
    wait_for(lambda: writer._waiting == 1, "the store to queue")
    threads.append(threading.Thread(target=insert_child, args=(sessions, 3, True, done, "mark")))
    threads[-1].start()
    # The store stays queued while the holder holds: the mark gave way its 0.2 s, then queued beside it.
    wait_for(lambda: writer._waiting == 2, "the background unit to stop giving way")
    release.set()
    for thread in threads:
        thread.join()
    db.close_sessions(sessions)
    assert sorted(done) == ["mark", "store"]
    assert rows(engine) == [1, 2, 3]


def test_a_failing_core_unit_rolls_back_alone_inside_a_shared_group(engine: Engine) -> None:
    """``core_unit`` (the accept's write) keeps its own SAVEPOINT on the driver: a unit that fails takes
    back its own rows only, even when the group it ran in commits another unit's."""
    sessions = db.make_sessionmaker(engine)
    writer = sessions.writer  # type: ignore[attr-defined]
    writer._max_age = STAY_OPEN
    commits = commits_counted(engine)
    outcomes: dict[str, str] = {}

    def first() -> None:
        with db.write_connection(sessions) as conn:
            conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (10, 1)")
            # Leave only once the second unit queues behind: the group stays open for it.
            wait_for(lambda: writer._waiting == 1, "the second unit to queue")
        outcomes["first"] = "committed"

    def second() -> None:
        try:
            with db.write_connection(sessions) as conn:
                conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (11, 1)")
                conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (10, 1)")  # taken: fails
        except IntegrityError:
            outcomes["second"] = "refused"

    one = threading.Thread(target=first)
    one.start()
    wait_for(lambda: writer._owner is not None, "the first unit to hold the lock")
    two = threading.Thread(target=second)
    two.start()
    one.join()
    two.join()
    db.close_sessions(sessions)
    assert outcomes == {"first": "committed", "second": "refused"}
    assert rows(engine) == [10]
    assert commits[0] == 1  # one group: the second unit's rollback did not end it
    with db.write_connection(sessions) as conn:  # and the writer goes on
        conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (12, 1)")
    db.close_sessions(sessions)
    assert rows(engine) == [10, 12]


def test_savepoints_journal_in_memory_and_each_rolls_back_alone(engine: Engine) -> None:
    """The write connection keeps its statement journal in memory (``temp_store=MEMORY``: the pages a
    SAVEPOINT may have to put back, a temporary file's write() each otherwise), and a batch's nested
    savepoints still undo exactly their own rows, however many pages they journaled (far past the
    64 KiB at which the default spills to a file)."""
    sessions = db.make_sessionmaker(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE blob (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    with db.write_connection(sessions) as conn:
        assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
        for n in range(40):
            try:
                # Unreleased, as a batch of accepts leaves them: the transaction's end ends them all.
                with db.savepoint(conn, "item", release=False):
                    conn.exec_driver_sql("INSERT INTO blob (id, body) VALUES (?, zeroblob(6000))", (n,))
                    conn.exec_driver_sql("UPDATE blob SET body = zeroblob(5000) WHERE id < ?", (n,))
                    if n % 7 == 3:
                        raise ZeroDivisionError
            except ZeroDivisionError:
                pass
    db.close_sessions(sessions)
    with engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT id, length(body) FROM blob ORDER BY id").all()
    assert [row[0] for row in kept] == [n for n in range(40) if n % 7 != 3]
    # Each kept row was shrunk by every later kept item (and by no undone one); the last is as inserted.
    assert [row[1] for row in kept] == [5000] * (len(kept) - 1) + [6000]


def test_a_begin_refused_is_sqlalchemys_error_and_the_writer_begins_again(engine: Engine, tmp_path: Path) -> None:
    """The writer's BEGIN IMMEDIATE goes straight to the driver (``db._ImmediateTransaction``); refused (the
    database locked by another process's writer), it is raised as SQLAlchemy's OperationalError, as
    ``Connection.begin`` raised it, through the engine's ``handle_error`` listeners; the writer drops that
    connection and its next unit begins on another."""
    @event.listens_for(engine, "connect")
    def no_waiting(dbapi_connection: Any, _record: Any) -> None:  # after _sqlite_pragmas: refused at once
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    handled: list[BaseException] = []
    event.listen(engine, "handle_error", lambda context: handled.append(context.original_exception))
    engine.dispose()  # the connections opened by the fixture had the 10 s wait
    sessions = db.make_sessionmaker(engine)
    other = sqlite3.connect(tmp_path / "group.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(OperationalError, match="database is locked") as refused:
            with db.write_connection(sessions) as conn:
                conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (1, 1)")
        assert isinstance(refused.value.orig, sqlite3.OperationalError)
        assert handled == [refused.value.orig]
    finally:
        other.execute("ROLLBACK")
        other.close()
    with db.write_connection(sessions) as conn:
        conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (2, 1)")
    with db.write_transaction(sessions) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (3, 1)"))
    db.close_sessions(sessions)
    assert rows(engine) == [2, 3]


def driver_of(sessions: Any) -> Any:
    """The DBAPI connection a write unit runs on, taken inside a unit of its own (its group committed)."""
    with db.write_connection(sessions) as conn:
        return conn.connection.driver_connection


def is_closed(driver: Any) -> bool:
    try:
        driver.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


def test_the_writer_keeps_its_connection_from_group_to_group_and_replaces_it_after_a_failed_commit(
    engine: Engine,
) -> None:
    """Groups one after another run on one connection, never checked out of the pool again (nor returned:
    no reset); one whose COMMIT failed is closed, and the next group runs on a new one."""
    sessions = db.make_sessionmaker(engine)
    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda *_: checkouts.append(1))
    event.listen(engine, "reset", lambda *_: checkouts.append(-1))
    commits = commits_counted(engine)
    drivers = {id(driver_of(sessions)) for _ in range(3)}
    with db.write_transaction(sessions) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (1, 1)"))
    assert len(drivers) == 1 and commits[0] == 4 and checkouts == [1]
    kept = driver_of(sessions)
    with pytest.raises(IntegrityError):
        with db.write_transaction(sessions) as s:
            s.execute(text("INSERT INTO child (id, parent_id) VALUES (2, 999)"))  # refused at COMMIT
    assert is_closed(kept)
    with db.write_transaction(sessions) as s:
        s.execute(text("INSERT INTO child (id, parent_id) VALUES (3, 1)"))
    fresh = driver_of(sessions)
    assert fresh is not kept and not is_closed(fresh)
    db.close_sessions(sessions)
    assert rows(engine) == [1, 3]


def test_a_kept_connection_closed_under_the_writer_is_replaced_before_its_group_begins(engine: Engine) -> None:
    """Found lost at its BEGIN, before anything of the group ran on it: the group begins on a fresh
    connection, and its unit never sees the lost one."""
    sessions = db.make_sessionmaker(engine)
    lost = driver_of(sessions)
    lost.close()
    with db.write_connection(sessions) as conn:
        conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (1, 1)")
        assert conn.connection.driver_connection is not lost
    db.close_sessions(sessions)
    assert rows(engine) == [1]


def test_the_writers_connection_goes_with_the_engines_pool(engine: Engine) -> None:
    """``engine.dispose()`` closes the writer's kept connection (at once when no unit holds it, else once
    its group ends), and the next group opens one from the new pool; ``close`` lets it go too."""
    sessions = db.make_sessionmaker(engine)
    idle = driver_of(sessions)
    engine.dispose()
    assert is_closed(idle)
    with db.write_connection(sessions) as conn:
        inside = conn.connection.driver_connection
        engine.dispose()  # by the unit's own thread, the lock held: not waited for
        conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (1, 1)")
        assert not is_closed(inside)  # the group's transaction is still on it
    assert is_closed(inside)
    after = driver_of(sessions)
    assert after is not idle and after is not inside
    db.close_sessions(sessions)
    assert rows(engine) == [1]
    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda *_: checkouts.append(1))
    driver_of(sessions)  # the writer goes on after close, on a connection checked out again
    db.close_sessions(sessions)
    assert checkouts == [1]
