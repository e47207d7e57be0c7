"""Honest health: a database that cannot take a write is reported, not hidden.

The database is really taken away: on SQLite its files are made immutable
(`chattr +i`, which even root cannot write through; chmod would not stop
root), on PostgreSQL the test's database stops accepting connections and its
sessions are terminated. Then `/readyz` says why it is not ready, a POST gets
the styled error page (503), and the CLI prints one line and exits 75.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from daemon.app import Cabinet, build
from daemon.cli import cli as cabinet_cli
from daemon.config import load_config
from daemon.db import engine_of, write_transaction
from daemon.faults import EX_TEMPFAIL, storage_fault
from daemon.health import Health
from tests.conftest import (
    PASSWORD, SERVER_DATABASES, WAIT_TIMEOUT, Browser, Cli, Env, FakeClock, RunningServer, free_port, wait_until,
)


def _chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@contextmanager
def database_down(env: Env) -> Iterator[None]:
    """The database refuses every write until the block ends."""
    if env.is_sqlite:
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr to make the SQLite files unwritable (chmod does not stop root)")
        database = Path(env.database)
        # Not the -shm file: it is SQLite's shared-memory index, mapped into the server's memory, and
        # a write fault on a mapped page of an immutable file is a SIGBUS (ext4 refuses page_mkwrite),
        # which kills the process inside SQLite before any error can be returned. The database file, its
        # WAL and the folder are where writes land, and refusing those is what this test is about.
        files = [p for p in (database, Path(f"{database}-wal"), database.parent) if p.exists()]
        try:
            _chattr("+i", files)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"this file system does not support chattr +i: {exc.stderr!r}")
        try:
            yield
        finally:
            _chattr("-i", files)
        return
    name = make_url(env.database_url).database
    assert SERVER_DATABASES is not None
    admin = create_engine(SERVER_DATABASES.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        yield
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.dispose()


def test_readyz_post_and_cli_when_the_database_takes_no_writes(server: RunningServer, env: Env, cli: Cli) -> None:
    cli("firm", "add", "Gagnon", "--email", "info@gagnon.example")
    cli("staff", "add", "marie@gagnon.example", "--name", "Marie", "--firm", "Gagnon", "--password-stdin",
        input=PASSWORD + "\n")
    browser = Browser(env.base_url)
    try:
        assert browser.get("/readyz").status_code == 200
        token = browser.csrf()
        with database_down(env):
            ready = browser.get("/readyz")
            assert ready.status_code == 503
            assert "database does not accept writes" in ready.text and "database is unavailable" in ready.text

            # Signing in writes a session row.
            response = browser.http.post(
                "/sign-in", data={"csrf_token": token, "email": "marie@gagnon.example", "password": PASSWORD}
            )
            assert response.status_code == 503
            assert response.headers["Content-Type"].startswith("text/html")
            assert "Something went wrong" in response.text and "Nothing was changed" in response.text
            assert "Traceback" not in response.text and "Error" not in response.text.replace("error", "")

            result = CliRunner().invoke(
                cabinet_cli, ["--config", str(env.config_path), "firm", "add", "Tremblay CPA", "--email", "b@t.example"]
            )
            assert result.exit_code == EX_TEMPFAIL, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and "database is unavailable" in lines[0] and "nothing was changed" in lines[0]
        # Back: ready again, and the same command works.
        ready = browser.get("/readyz")
        assert ready.status_code == 200, ready.text
        cli("firm", "add", "Tremblay CPA", "--email", "b@t.example")
    finally:
        browser.close()


def test_cli_against_a_database_server_that_is_not_there_exits_75_with_one_line(tmp_path: Path) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/cabinet"
    config_path = tmp_path / "cabinet.toml"
    config_path.write_text(f'[storage]\ndata_dir = "data"\ndatabase_url = "{dead}"\n', encoding="utf-8")
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "secret_keys").write_text("k" * 48 + "\n", encoding="utf-8")
    result = CliRunner().invoke(cabinet_cli, ["--config", str(config_path), "firm", "list"])
    assert result.exit_code == EX_TEMPFAIL, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the database is unavailable"), result.output


def test_readyz_reports_an_outbox_that_is_not_moving(env: Env, cli: Cli, clock: FakeClock) -> None:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy")
    cli("invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        health = Health(cabinet.sessions, cabinet.clock, outbox_max_delay=timedelta(minutes=15))
        assert health.problems() == []  # just queued: due, but not late
        clock.advance(minutes=16)
        (problem,) = health.problems()
        assert problem.startswith("outbox: an email has been due for")
        assert env.sql("SELECT id FROM heartbeat") != []  # the check wrote its row
    finally:
        cabinet.close()


# The race behind a first `/readyz` that still said "readonly" once the SQLite file was writable again.
# A connection SQLite opened while its file was immutable stays read-only. The first write on it fails
# and drops it (db._sqlite_read_only_connection), but the group writer kept its group open on the
# dropped connection for the units queued behind: each of them, the health check's retry included,
# failed there too, until one found nobody behind it. Now the group ends with the unit that lost the
# connection, and the units behind it start afresh on a new one.

def _pool_opened_while_down(env: Env, sessions: sessionmaker[Session]) -> None:
    """Every pooled connection is one opened while the database was down, as a busy server opens
    more when its readers and writers overlap."""
    engine = engine_of(sessions)
    with database_down(env):
        engine.dispose()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))


@pytest.fixture
def cabinet_on_sqlite(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    if not env.is_sqlite:
        pytest.skip("SQLite's group writer; PostgreSQL's transactions do not queue on one connection")
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cabinet = build(load_config(env.config_path), clock=clock)
    # A group is committed early once it is 50 ms old; here the threads that queue behind a unit may take
    # longer than that to start on a busy machine, and the race needs them in the same group.
    cabinet.sessions.writer._max_age = WAIT_TIMEOUT  # type: ignore[attr-defined]
    yield cabinet
    cabinet.close()


def _touch_heartbeat(sessions: sessionmaker[Session], outcomes: dict[str, object]) -> None:
    """A foreground write, queued behind the unit that finds the connection read-only."""
    with write_transaction(sessions) as s:
        s.execute(text("UPDATE heartbeat SET beat_at = beat_at"))
    outcomes["other"] = "committed"


def test_a_write_that_finds_the_connection_read_only_fails_alone_and_the_check_behind_it_says_ready(
    env: Env, clock: FakeClock, cabinet_on_sqlite: Cabinet,
) -> None:
    sessions = cabinet_on_sqlite.sessions
    writer = sessions.writer  # type: ignore[attr-defined]
    health = Health(sessions, clock)
    assert health.problems() == []
    _pool_opened_while_down(env, sessions)
    outcomes: dict[str, object] = {}
    inside, queued = threading.Event(), threading.Event()

    def background_write() -> None:  # as the outbox worker's
        try:
            with write_transaction(sessions, background=True) as s:
                inside.set()
                queued.wait()
                s.execute(text("UPDATE heartbeat SET beat_at = beat_at"))  # read-only: fails, drops the connection
            outcomes["background"] = "committed"
        except Exception as exc:  # noqa: BLE001 - what it failed with is the assertion
            outcomes["background"] = storage_fault(exc)

    threads = [threading.Thread(target=background_write)]
    threads[0].start()
    wait_until(inside.is_set, what="the first write inside the writer")
    threads += [threading.Thread(target=lambda: outcomes.update(health=health.problems())),
                threading.Thread(target=_touch_heartbeat, args=(sessions, outcomes))]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: writer._waiting == 2, what="the check and another write to queue behind the first")
    queued.set()
    for thread in threads:
        thread.join()
    assert outcomes == {
        "background": "the database is unavailable (attempt to write a readonly database)",
        "health": [],
        "other": "committed",
    }


def test_the_check_that_finds_the_connection_read_only_with_a_write_queued_behind_it_says_ready(
    env: Env, clock: FakeClock, cabinet_on_sqlite: Cabinet,
) -> None:
    sessions = cabinet_on_sqlite.sessions
    writer = sessions.writer  # type: ignore[attr-defined]
    health = Health(sessions, clock)
    assert health.problems() == []
    _pool_opened_while_down(env, sessions)
    outcomes: dict[str, object] = {}
    inside = threading.Event()

    def hold_the_first_heartbeat(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # The check's own write waits, holding the writer, until another write queues behind it.
        if "heartbeat" in statement and not inside.is_set():
            inside.set()
            wait_until(lambda: writer._waiting == 1, what="a write to queue behind the check")

    engine = engine_of(sessions)
    event.listen(engine, "before_cursor_execute", hold_the_first_heartbeat)
    try:
        threads = [threading.Thread(target=lambda: outcomes.update(health=health.problems()))]
        threads[0].start()
        wait_until(inside.is_set, what="the check's write inside the writer")
        threads.append(threading.Thread(target=_touch_heartbeat, args=(sessions, outcomes)))
        threads[-1].start()
        for thread in threads:
            thread.join()
    finally:
        event.remove(engine, "before_cursor_execute", hold_the_first_heartbeat)
    assert outcomes == {"health": [], "other": "committed"}


def test_a_write_of_a_group_that_loses_its_connection_is_told_why(
    env: Env, clock: FakeClock, cabinet_on_sqlite: Cabinet,
) -> None:
    """A unit already done in the group waits for the group's COMMIT; when a later unit of the group finds
    the connection read-only, the group's transaction is gone: the waiting unit fails with that unit's
    storage fault (what the log and the adapter say), not with the ORM's "invalid transaction" error."""
    sessions = cabinet_on_sqlite.sessions
    writer = sessions.writer  # type: ignore[attr-defined]
    _pool_opened_while_down(env, sessions)
    outcomes: dict[str, BaseException | str] = {}
    inside, queued = threading.Event(), threading.Event()

    def done_first() -> None:
        try:
            with write_transaction(sessions) as s:
                s.execute(text("SELECT beat_at FROM heartbeat"))  # reads: done in the group, waits for its COMMIT
                inside.set()
                queued.wait()
            outcomes["first"] = "committed"
        except Exception as exc:  # noqa: BLE001 - what it failed with is the assertion
            outcomes["first"] = exc

    def write_second() -> None:
        try:
            with write_transaction(sessions) as s:
                s.execute(text("UPDATE heartbeat SET beat_at = beat_at"))  # read-only: fails, drops the connection
            outcomes["second"] = "committed"
        except Exception as exc:  # noqa: BLE001
            outcomes["second"] = exc

    first, second = threading.Thread(target=done_first), threading.Thread(target=write_second)
    first.start()
    wait_until(inside.is_set, what="the first unit inside the writer")
    second.start()
    wait_until(lambda: writer._waiting == 1, what="a second write to queue behind the first")
    queued.set()
    first.join()
    second.join()
    for name in ("first", "second"):
        failed = outcomes[name]
        assert isinstance(failed, BaseException), outcomes
        assert storage_fault(failed) == "the database is unavailable (attempt to write a readonly database)"
        assert type(failed).__name__ == "OperationalError", repr(failed)
