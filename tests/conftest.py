"""Fixtures that start the real parts on loopback: the CLI, the daemon, the Maildir.

Nothing of Cabinet's own is mocked. The only stand-in is the clock, which the
composition root accepts as a parameter, so expiry can be tested without
waiting thirty days.

The database is SQLite in each test's data folder (the embedded default),
unless ``CABINET_TEST_DATABASE_URL`` names a PostgreSQL server (its maintenance
database, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``): then
each test gets a database of its own on that server, created empty and dropped
afterwards. ``scripts/test.sh`` runs the suite both ways.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, inspect, make_url, text
from sqlalchemy.pool import NullPool

from daemon import db
from daemon.app import Cabinet, build
from daemon.cli import cli as cabinet_cli
from daemon.config import load_config
from daemon.scheduler import Scheduler
from daemon.service import Service
from mailer.maildir import list_mail, read_mail, text_body

PASSWORD = "correct horse battery staple"


class FakeClock:
    """Real time plus an offset the test moves, so the CLI (on the system clock)
    and the daemon (on this one) agree until a test jumps ahead."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()
        self._frozen: datetime | None = None

    def now(self) -> datetime:
        with self._lock:
            return (self._frozen or datetime.now(timezone.utc)) + self._offset

    def freeze(self) -> None:
        """Stop the clock where it is (``advance`` still moves it): for rules measured in seconds."""
        with self._lock:
            self._frozen = datetime.now(timezone.utc)

    def advance(self, **delta: float) -> None:
        with self._lock:
            self._offset += timedelta(**delta)


# Waits are bounded, not timed: each returns as soon as its condition holds, and the bound only turns
# a hang into a failure that says what it waited for. They are generous because a 2-core CI machine
# shared with other jobs runs everything many times slower than a laptop (`cabinet serve` takes
# about 2 s to come up when idle; at a load average of 60 a test that starts two took 3 minutes).
START_TIMEOUT = 300.0  # a child process (`cabinet serve`) answering /readyz, or refusing to start
WAIT_TIMEOUT = 60.0  # anything else: an email, a row, a state

T = TypeVar("T")


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """One TLS context for the tests' HTTP clients. Each httpx client otherwise builds its own and
    loads the CA bundle into it: ~45 ms of CPU per client (0.35 s at a load average of 15), for
    requests that are plain HTTP on loopback anyway."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def wait_until(
    predicate: Callable[[], T], timeout: float = WAIT_TIMEOUT, what: str = "the condition",
    detail: Callable[[], str] | None = None, interval: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails after ``timeout`` seconds saying ``what`` it waited for, followed by ``detail()`` (e.g. a
    child process's last lines of output) when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def _port_share() -> tuple[int, int]:
    """``CABINET_TEST_PORT_SHARE=k/n``: this run's share of the ports when n runs go at once (scripts/test.sh
    runs SQLite's as 0/2 and PostgreSQL's as 1/2); the whole range by default."""
    try:
        k, n = (int(part) for part in os.environ.get("CABINET_TEST_PORT_SHARE", "0/1").split("/"))
    except ValueError:
        raise pytest.UsageError("CABINET_TEST_PORT_SHARE must be k/n, e.g. 1/2") from None
    if not 0 <= k < n:
        raise pytest.UsageError(f"CABINET_TEST_PORT_SHARE={k}/{n}: k must be at least 0 and below n")
    return k, n


def _test_port_range() -> range:
    """Loopback ports this test process may listen on.

    Below the kernel's ephemeral range, so an outgoing connection (the load tests open thousands)
    never takes a port a test chose but has not bound yet, or one a killed server is about to bind
    again; a share of its own for each test run going at once (``_port_share``), and in it a slice of
    its own for each pytest-xdist worker, so parallel runs and workers never collide. A port is free
    when it is drawn, not reserved: another process drawing from the same ports could bind it first."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, min(ephemeral_low, 65536)
    run, runs = _port_share()
    width = (high - low) // runs
    low, high = low + run * width, low + (run + 1) * width
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    size = (high - low) // workers
    if size < 100:
        return range(0)  # no room below the ephemeral range: let the kernel choose
    return range(low + index * size, low + (index + 1) * size)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now (see _test_port_range)."""
    candidates = _test_port_range()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", secrets.choice(candidates) if candidates else 0))
            except OSError:
                sock.close()  # taken (perhaps by another test run on this machine): draw again
                continue
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


TEST_DATABASE_URL = os.environ.get("CABINET_TEST_DATABASE_URL", "").strip()


class ServerDatabases:
    """Throwaway databases on the PostgreSQL server ``CABINET_TEST_DATABASE_URL`` names."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        if not self.url.drivername.startswith("postgresql"):
            raise pytest.UsageError(f"CABINET_TEST_DATABASE_URL must be a postgresql+psycopg:// URL, got {url!r}")
        self._admin: Engine | None = None
        self.created: list[str] = []
        self.templates: list[str] = []

    def _engine(self) -> Engine:
        # CREATE and DROP DATABASE cannot run inside a transaction.
        if self._admin is None:
            self._admin = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=1, pool_pre_ping=True)
        return self._admin

    def create(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"cabinet_test_{secrets.token_hex(8)}"
        with self._engine().connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def create_migrated_template(self) -> str:
        """A database migrated to head, for ``replace_with_copy``; returns its name (dropped by ``close``)."""
        name = f"cabinet_template_{secrets.token_hex(8)}"
        with self._engine().connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.templates.append(name)
        engine = create_engine(self.url.set(database=name), poolclass=NullPool)
        try:
            db.upgrade(engine)
        finally:
            engine.dispose()  # CREATE DATABASE … TEMPLATE needs the template without connections
        return name

    def replace_with_copy(self, database_url: str, template: str) -> None:
        """Make the (still unused) test database ``database_url`` names a copy of ``template``."""
        name = make_url(database_url).database
        assert name in self.created, f"{name} is not a test database"
        with self._engine().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop_created(self) -> None:
        """Drop this test's databases, disconnecting whatever is still connected to them."""
        while self.created:
            name = self.created.pop()
            with self._engine().connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.drop_created()
        while self.templates:
            name = self.templates.pop()
            with self._engine().connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self._admin is not None:
            self._admin.dispose()


SERVER_DATABASES = ServerDatabases(TEST_DATABASE_URL) if TEST_DATABASE_URL else None


def send_due_at_once(*cabinets: Any) -> list[int]:
    """Each built Cabinet's outbox worker's ``send_due`` at once, on one event loop (workers of several
    instances racing for the same emails); how many each sent. The Cabinets are closed afterwards."""

    async def together() -> list[int]:
        return list(await asyncio.gather(*(cabinet.worker.send_due() for cabinet in cabinets)))

    try:
        return asyncio.run(together())
    finally:
        for cabinet in cabinets:
            cabinet.close()


def sqlite_url(root: Path) -> str:
    """The embedded default's database for a config file in ``root`` with ``data_dir = "data"``."""
    return f"sqlite:///{root / 'data' / 'cabinet.sqlite3'}"


def fresh_database_url(root: Path) -> str:
    """An empty database for one test: on the PostgreSQL test server if there is one
    (dropped when the test ends), else an SQLite file under ``root/data``."""
    if SERVER_DATABASES is not None:
        return SERVER_DATABASES.create()
    (root / "data").mkdir(parents=True, exist_ok=True)
    return sqlite_url(root)


def pytest_report_header(config: pytest.Config) -> str:
    if SERVER_DATABASES is None:
        return "database: SQLite, one file per test"
    return f"database: {SERVER_DATABASES.url.render_as_string()}, one fresh database per test"


# Longest first (a list scheduler's best simple order): under `--dist worksteal` an idle worker takes
# queued tests from a busy one, but a test already running cannot move, so a minutes-long kill test
# started last keeps the run waiting alone.
HEAVY_FIRST = ("slow", "browser", "postfix")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> int:
        return next((i for i, marker in enumerate(HEAVY_FIRST) if item.get_closest_marker(marker)), len(HEAVY_FIRST))

    items.sort(key=weight)  # stable: within each group, the usual order (a file's tests together)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SERVER_DATABASES is not None:
        SERVER_DATABASES.close()


@pytest.fixture(autouse=True)
def _drop_test_databases() -> Iterator[None]:
    """Drops the server databases a test created, after all its other fixtures have stopped."""
    yield
    if SERVER_DATABASES is not None:
        SERVER_DATABASES.drop_created()


@dataclass
class Env:
    root: Path
    config_path: Path
    http_port: int
    smtp_port: int
    database_url: str = ""  # empty: the embedded default, SQLite in root/data

    def __post_init__(self) -> None:
        if not self.database_url:
            self.database_url = sqlite_url(self.root)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def maildir(self) -> Path:
        return self.root / "data" / "maildir"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def database(self) -> Path | str:
        """The SQLite file, or the server database's URL."""
        if self.is_sqlite:
            return Path(make_url(self.database_url).database or "")
        return self.database_url

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Read the real database directly, as an operator would."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params))
        finally:
            engine.dispose()

    def write(self, *statements: str, **params: Any) -> None:
        """Change the real database directly, in one committed transaction, as another instance or an
        operator would (each statement with the same ``params``)."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                for statement in statements:
                    conn.execute(text(statement), params)
        finally:
            engine.dispose()

    def columns(self, table: str) -> list[str]:
        """The names of ``table``'s columns, as the database reports them."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            return [column["name"] for column in inspect(engine).get_columns(table)]
        finally:
            engine.dispose()


def write_config(root: Path, extra: str = "") -> Env:
    http_port, smtp_port = free_ports(2)
    config_path = root / "cabinet.toml"
    # On a PostgreSQL test run, a database of the test's own; otherwise the embedded SQLite default.
    database_url = SERVER_DATABASES.create() if SERVER_DATABASES is not None else ""
    storage = f'database_url = "{database_url}"\n' if database_url else ""
    config_path.write_text(
        f"""
[storage]
data_dir = "data"
{storage}
[http]
listen = "127.0.0.1:{http_port}"

[smtp]
listen = "127.0.0.1:{smtp_port}"
domain = "cabinet.example"

[mail]
poll_interval = 0.2
{extra}

[scheduler]
interval = 0.2

[security]
# argon2id still, at its cheapest accepted cost: the suite hashes and checks hundreds of passwords.
password_time_cost = 1
password_memory_kib = 8192

[metrics]
listen = "127.0.0.1:0"
""",
        encoding="utf-8",
    )
    return Env(root, config_path, http_port, smtp_port, database_url)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return write_config(tmp_path)


class MigratedSchema:
    """The schema at head, migrated once per test process and copied into each test's database.

    Running the migrations costs 1–2 s per test on a loaded machine (most of a simple test's time);
    copying a migrated SQLite file or cloning a PostgreSQL template database (CREATE DATABASE …
    TEMPLATE) gives the same schema in a fraction of that. `cabinet init` then still runs on
    it (key, Maildir, public URL; the migrations find nothing to do). Migrating an empty
    database is tested where it is the subject: tests/test_migrations.py, and every test that
    runs `cabinet init` on a database of its own (`write_config` without this fixture)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._sqlite: Path | None = None
        self._server_template: str | None = None

    def copy_into(self, env: Env) -> None:
        """Give ``env``'s still unused database the migrated schema."""
        if not env.is_sqlite:
            assert SERVER_DATABASES is not None
            if self._server_template is None:
                self._server_template = SERVER_DATABASES.create_migrated_template()
            SERVER_DATABASES.replace_with_copy(env.database_url, self._server_template)
            return
        target = Path(env.database)
        assert not target.exists(), f"{target} is already in use"
        if self._sqlite is None:
            self._sqlite = self._migrate_sqlite()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._sqlite, target)

    def _migrate_sqlite(self) -> Path:
        path = self._folder / "cabinet.sqlite3"
        engine = db.make_engine(f"sqlite:///{path}")
        try:
            db.upgrade(engine)
            with engine.connect() as conn:
                # Everything in the main file, so copying that one file copies the whole database.
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            engine.dispose()
        for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            assert not leftover.exists() or leftover.stat().st_size == 0, f"{leftover} holds data the copy would miss"
        return path


@pytest.fixture(scope="session")
def migrated_schema(tmp_path_factory: pytest.TempPathFactory) -> MigratedSchema:
    return MigratedSchema(tmp_path_factory.mktemp("migrated-schema"))


Cli = Callable[..., Result]


@pytest.fixture
def cli(env: Env, migrated_schema: MigratedSchema) -> Cli:
    """Run the real `cabinet` command against this test's config (initialised: `cabinet init` on a
    copy of the migrated schema); fails the test on a bad exit."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None, expect: int = 0) -> Result:
        result = runner.invoke(cabinet_cli, ["--config", str(env.config_path), *args], input=input)
        if result.exit_code != expect:
            raise AssertionError(
                f"cabinet {' '.join(args)} exited {result.exit_code}, expected {expect}\n"
                f"{result.output}\n{result.exception!r}"
            )
        return result

    migrated_schema.copy_into(env)
    run("init")
    return run


class RunningServer:
    """`cabinet serve`'s Service in a background thread with its own event loop."""

    def __init__(self, env: Env, clock: FakeClock) -> None:
        self.env = env
        self.clock = clock
        self.cabinet = build(load_config(env.config_path), clock=clock)
        self.service = Service(self.cabinet)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(START_TIMEOUT)

    def settle(self, sweep: bool = True) -> None:
        """What the server would have done by its next passes, without waiting for them: one
        scheduler pass now on its clock (``sweep``), then until no email is waiting to be sent.
        After this, "nothing more was sent" is a fact, not a hope that a sleep was long enough."""
        if sweep:
            Scheduler(self.cabinet).run_due()  # a second pass alongside the server's: sweeps are idempotent
        wait_until(lambda: self.env.sql("SELECT count(*) FROM outbox WHERE state = 'pending'") == [(0,)],
                   what="the outbox to have sent everything queued")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(WAIT_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_TIMEOUT)
        self.cabinet.close()


class ServeProcess:
    """`cabinet serve` as a real child process.

    Its output (stdout and stderr) goes to a log file in the test's folder, never to DEVNULL or an
    unread pipe (which blocks the child once full); every failure about it ends with its last lines.
    Restarting appends to the same file."""

    def __init__(self, env: Env, *args: str, name: str = "serve", http_port: int | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.env = env
        self.args = args
        self.http_port = http_port or env.http_port
        self.environ = {**os.environ, **(environ or {})}
        self.log_path = env.root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = START_TIMEOUT) -> ServeProcess:
        """Start it and wait until /readyz says ready (HTTP, SMTP listener and workers all up)."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "--config", str(self.env.config_path), "serve", *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.environ,
            )
        # One client for all the polls: httpx.get() builds a client (and its TLS context) each time,
        # ~45 ms of CPU per poll, a third of a core taken from the starting server every 0.1 s.
        # A generous per-request timeout: a new instance under load can be slow to answer.
        with httpx.Client(timeout=30, verify=shared_tls()) as poller:
            wait_until(lambda: self._ready(poller), timeout,
                       f"cabinet serve (pid {self.process.pid}) to answer {self.base_url}/readyz", self.tail, interval=0.1)
        return self

    def _ready(self, poller: httpx.Client) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"cabinet serve exited {self.process.returncode} before it was ready\n{self.tail()}")
        try:
            return poller.get(f"{self.base_url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"last {lines} lines of {self.log_path}:\n" + "\n".join(self.output().splitlines()[-lines:])

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT_TIMEOUT) -> int:
        """Its exit status, once it has exited (fails with its output if it has not within ``timeout``)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cabinet serve (pid {self.process.pid}) still running after {timeout:.0f} s\n{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.send_signal(signal.SIGKILL)
        self.wait()

    def stop(self, timeout: float = WAIT_TIMEOUT) -> int | None:
        """SIGTERM if it still runs, then its exit status; SIGKILL if it does not stop (a test's cleanup)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(env: Env, cli: Cli, clock: FakeClock) -> Iterator[RunningServer]:
    running = RunningServer(env, clock)
    running.start()
    yield running
    running.stop()


class Mailbox:
    """The real Maildir the daemon delivers into."""

    def __init__(self, path: Path, sql: Callable[..., list[Any]] | None = None) -> None:
        self.path = path
        self._sql = sql

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        return [read_mail(self.path, m.id) for m in list_mail(self.path, to)]

    def _recorded(self, found: list[EmailMessage]) -> bool:
        """Whether the outbox has recorded each of ``found`` as sent. The worker writes its "sent"
        marks in batches a moment after the relay (here the Maildir) has the email; a test that then
        moves the fake clock past the claim's lease would otherwise see the email claimed again."""
        ids = [str(m["Message-ID"]) for m in found if m["Message-ID"]]
        if self._sql is None or not ids:
            return True
        placeholders = ", ".join(f":m{i}" for i in range(len(ids)))
        waiting = self._sql(f"SELECT count(*) FROM outbox WHERE state = 'pending' AND message_id IN ({placeholders})",
                            **{f"m{i}": value for i, value in enumerate(ids)})
        return waiting[0][0] == 0

    def wait(self, to: str, count: int = 1, subject: str = "", timeout: float = WAIT_TIMEOUT) -> list[EmailMessage]:
        """Wait until ``to`` has at least ``count`` messages whose subject contains ``subject``, each
        recorded as sent by the outbox."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages(to) if subject in str(m["Subject"])]
            if len(found) >= count and self._recorded(found):
                return found
            if time.monotonic() > deadline:
                subjects = [str(m["Subject"]) for m in self.messages()]
                raise AssertionError(f"expected {count} email(s) to {to} about {subject!r}; maildir has {subjects}")
            time.sleep(0.05)


@pytest.fixture
def mailbox(env: Env) -> Mailbox:
    return Mailbox(env.maildir, env.sql)


def queued_email(env: Env, cli: Cli, where: str, **params: Any) -> EmailMessage:
    """The newest outbox email matching ``where`` (SQL on the outbox table), as `cabinet mail show --raw`
    prints it: the worker stores an email's bytes only when it first sends it, so ``raw`` may still be
    NULL while the email is queued (the command renders it from what was recorded, byte for byte)."""
    rows = env.sql(f"SELECT id FROM outbox WHERE {where} ORDER BY id DESC LIMIT 1", **params)
    assert rows, f"no outbox email where {where} {params}"
    shown = cli("mail", "show", str(rows[0][0]), "--raw")
    return BytesParser(policy=policy.default).parsebytes(shown.stdout_bytes)  # type: ignore[return-value]


LINK = re.compile(r"https?://\S+/invitations/(?:renew/)?[A-Za-z0-9_\-.]+")


def link_in(message: EmailMessage) -> str:
    match = LINK.search(text_body(message))
    assert match, f"no link in:\n{text_body(message)}"
    return match.group(0)


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


class Browser:
    """An HTTP client with a cookie jar, like one browser profile."""

    def __init__(self, base_url: str, accept_language: str = "en") -> None:
        self.http = httpx.Client(
            base_url=base_url, follow_redirects=False, headers={"Accept-Language": accept_language}, timeout=30,
            verify=shared_tls(),
        )

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def head(self, url: str) -> httpx.Response:
        return self.http.head(url)

    def submit(self, page_url: str, action: str, **fields: str) -> httpx.Response:
        """Load a page, then POST a form to ``action`` with the page's CSRF token."""
        page = self.http.get(page_url)
        return self.http.post(action, data={"csrf_token": csrf_of(page.text), **fields})

    def csrf(self) -> str:
        """A CSRF token for this browser, from the sign-in page (every page form carries the same)."""
        return csrf_of(self.http.get("/sign-in").text)

    def post(self, action: str, **fields: str) -> httpx.Response:
        return self.http.post(action, data={"csrf_token": self.csrf(), **fields})

    def sign_in(self, page_url: str, email: str, password: str = PASSWORD) -> httpx.Response:
        return self.post("/sign-in", email=email, password=password, next=httpx.URL(page_url).path)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(server: RunningServer, env: Env) -> Iterator[Browser]:
    client = Browser(env.base_url)
    yield client
    client.close()


@pytest.fixture
def make_browser(server: RunningServer, env: Env) -> Iterator[Callable[..., Browser]]:
    made: list[Browser] = []

    def make(accept_language: str = "en") -> Browser:
        client = Browser(env.base_url, accept_language)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@dataclass
class Seed:
    firm: str
    other_firm: str
    accountant: str
    company: str
    admin: str


@pytest.fixture
def seed(cli: Cli) -> Seed:
    """A firm with one accountant, a second firm, and a client company."""
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("firm", "add", "Gagnon & Associés", "--email", "info@gagnon.example")
    cli(
        "staff", "add", "marie@tremblay.example", "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n",
    )
    cli(
        "company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy",
        "--locale", "en",
    )
    return Seed("Tremblay CPA", "Gagnon & Associés", "marie@tremblay.example", "Boulangerie Roy", "julie@roy.example")


def accept_invitation(browser: Browser, cli: Cli, mailbox: Mailbox, company: str, email: str) -> None:
    """Flow 1 through the real HTTP server: connects ``company`` to the accountant's only firm."""
    cli("invitation", "send", "--company", company, "--email", email)
    link = link_in(mailbox.wait(email, subject="Invitation")[-1])
    browser.sign_in(link, email)
    response = browser.submit(link, link + "/accept")
    assert response.status_code == 303, response.text


def roster_of(cli: Cli, firm: str) -> list[dict[str, Any]]:
    import json

    return json.loads(cli("client", "list", "--firm", firm, "--json").output)


LINK_ANY = re.compile(r"https?://\S+/(?:company|transfers|setup|payment)/[A-Za-z0-9_\-.]+")


def any_link_in(message: EmailMessage) -> str:
    match = LINK_ANY.search(text_body(message))
    assert match, f"no link in:\n{text_body(message)}"
    return match.group(0)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a line of what a test measured; the run's summary prints it (pytest-xdist workers'
    own output is not shown, but their reports' user_properties are)."""

    def record(line: str) -> None:
        request.node.user_properties.append(("figures", line))

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for key, value in getattr(report, "user_properties", ())
        if key == "figures"
    ]
    if lines:
        terminalreporter.section("figures measured by the tests")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium, one per test module (tests open their own contexts)."""
    from tests.browser import chromium_browser

    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def cabinet(env: Env) -> Iterator[Cabinet]:
    """Cabinet built from the test's configuration (the composition root, no server), closed after.
    A module that needs another (a fake clock, a seeded roster) defines its own ``cabinet``."""
    built = build(load_config(env.config_path))
    yield built
    built.close()


def sent_invitation(cli: Cli, seed: Seed, env: Env) -> int:
    """The id of a new invitation of the seed company to the seed accountant, sent by the CLI."""
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    return int(env.sql("SELECT max(id) FROM invitations")[0][0])


def invitation_token(cabinet: Cabinet, invitation_id: int) -> str:
    """The signed token of invitation ``invitation_id``'s link, as its email carries it."""
    from daemon.models import Invitation
    from daemon.tokens import Purpose

    with cabinet.sessions() as s:
        invitation = s.get(Invitation, invitation_id)
        assert invitation is not None
        return cabinet.signer.sign(Purpose.INVITE, [invitation.id, invitation.nonce])
