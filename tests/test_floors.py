"""The bench's floors (bench/floors.py) still do their work: each started on a loopback port and asked
with a real HTTP client, the accept's emails received by a real aiosmtpd relay. No timings here.

On SQLite, and also on PostgreSQL (bench/floors_pg.py, each of its read and write modes) when
``CABINET_TEST_DATABASE_URL`` names a server: the same requests, the same checks."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psycopg
import pytest
from aiosmtpd.controller import Controller

from bench import floors, floors_pg, run
from bench.instance import free_port
from tests.conftest import SERVER_DATABASES, wait_until
from tests.signatures import forged

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], what: str, detail: Callable[[], str] | None = None) -> None:
    """conftest's ``wait_until``, with a refused or reset connection counting as "not yet"."""

    def ready() -> Any:
        try:
            return condition()
        except (OSError, httpx.HTTPError):
            return False

    wait_until(ready, what=what, detail=detail)


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


@pytest.fixture
def start_floor(tmp_path: Path) -> Iterator[Callable[..., int]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(kind: str, folder: Path, *args: str) -> int:
        port = free_port()
        log = tmp_path / f"{kind}.log"
        process = subprocess.Popen([sys.executable, "-m", "bench.floors", kind, str(port), str(folder), *args],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        processes.append(process)

        def up() -> bool:
            if process.poll() is not None:  # died: say so now, with what it printed, not after the wait
                raise AssertionError(f"the {kind} floor exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            return listening(port)

        wait_for(up, f"the {kind} floor listening", detail=lambda: log.read_text()[-4000:])
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=60)


# The databases each floor is checked on: SQLite, and a fresh PostgreSQL database on the test server if
# there is one; "" is SQLite, else how the PostgreSQL floor reads (get) or writes (accept).
ON_SERVER = pytest.mark.skipif(SERVER_DATABASES is None, reason="CABINET_TEST_DATABASE_URL names no PostgreSQL server")
GET_DATABASES = [pytest.param("", id="sqlite")] + [pytest.param(mode, id=f"postgresql-{mode}", marks=ON_SERVER)
                                                    for mode in floors_pg.READ_MODES]
ACCEPT_DATABASES = [pytest.param("", id="sqlite")] + [pytest.param(mode, id=f"postgresql-{mode}", marks=ON_SERVER)
                                                       for mode in floors_pg.WRITE_MODES]


def seed(folder: Path, count: int, mode: str) -> floors.Seeded:
    """The floor's data in ``folder``: SQLite, or (``mode``) a new database on the test server."""
    if not mode:
        return floors.seed(folder, count)
    assert SERVER_DATABASES is not None
    return floors.seed(folder, count, SERVER_DATABASES.create())


def rows(folder: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """``sql``'s rows in the floor's database (written with ``?`` placeholders, as for SQLite)."""
    url = floors_pg.database_url(folder)
    if url is not None:
        with psycopg.connect(floors_pg.psycopg_url(url), autocommit=True) as server:
            return [tuple(row) for row in server.execute(sql.replace("?", "%s"), params).fetchall()]  # type: ignore[arg-type]
    connection = sqlite3.connect(folder / floors.DATABASE)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


@pytest.mark.parametrize("mode", GET_DATABASES)
def test_the_get_floor_answers_a_page_with_a_csrf_token_and_a_cookie(tmp_path: Path, start_floor: Any,
                                                                     mode: str) -> None:
    folder = tmp_path / "get"
    seeded = seed(folder, 3, mode)
    secret = (folder / floors.KEY_FILE).read_text().strip()
    port = start_floor("get", folder, "3000", *([mode] if mode else []))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        answer = client.get(seeded.paths[0])
        assert answer.status_code == 200
        assert len(answer.content) == 3000  # Cabinet's page size, as asked
        assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["Cache-Control"] == "no-store"
        assert "Company 000000" in answer.text
        cookie = answer.cookies[floors.BROWSER_COOKIE]
        csrf = answer.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        # Both signed in itsdangerous's format, the CSRF token bound to the browser id in the cookie.
        browser_id = floors.serializer(secret, floors.BROWSER).loads(cookie)
        assert floors.serializer(secret, floors.CSRF).loads(csrf, max_age=60) == browser_id
        second = client.get(seeded.paths[0])  # a new visitor: a new browser id and token
        assert second.cookies[floors.BROWSER_COOKIE] != cookie
        client.get(seeded.paths[1])

        tampered = forged(seeded.paths[2])
        assert client.get(tampered).status_code == 404
        assert client.get("/invitations/not-a-token").status_code == 404

    # The first opening of each link is noted once; a forged link's not at all.
    wait_for(lambda: rows(folder, "SELECT count(*) FROM events WHERE company_id = 2")[0][0] == 1,
             "the second link's opening written")
    assert rows(folder, "SELECT company_id, count(*) FROM events WHERE kind = 'link.opened' GROUP BY 1 "
                        "ORDER BY 1") == [(1, 1), (2, 1)]


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.mark.parametrize("mode", ACCEPT_DATABASES)
@pytest.mark.parametrize("composer", sorted(floors.COMPOSERS))
def test_the_accept_floor_writes_answers_303_and_sends_two_emails(tmp_path: Path, start_floor: Any,
                                                                   composer: str, mode: str) -> None:
    folder = tmp_path / "accept"
    seeded = seed(folder, 3, mode)
    secret = (folder / floors.KEY_FILE).read_text().strip()
    sink = Sink()
    relay = Controller(sink, hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        port = start_floor("accept", folder, str(relay.port), composer, *([mode] if mode else []))
        base = f"http://127.0.0.1:{port}"
        headers = {"Cookie": seeded.cookie, "Origin": base, "Sec-Fetch-Site": "same-origin"}
        with httpx.Client(base_url=base, timeout=60) as client:
            answer = client.post(seeded.paths[0] + "/accept", data={"csrf_token": seeded.csrf}, headers=headers)
            assert answer.status_code == 303
            assert answer.headers["Location"] == seeded.paths[0]
            assert rows(folder, "SELECT state, firm_id, accepted_by_id FROM invitations WHERE id = 1") == [("accepted", 1, 1)]
            assert rows(folder, "SELECT firm_id, company_id, status FROM clients") == [(1, 1, "active")]
            assert rows(folder, "SELECT kind, company_id FROM events") == [("invitation.accepted", 1)]

            wait_for(lambda: len(sink.messages) == 2, "the two emails at the relay")
            recipients = sorted(rcpt for _, rcpts, _ in sink.messages for rcpt in rcpts)
            assert recipients == sorted(["admin0@company-0.example", floors.ACCOUNTANT])
            emails = [message_from_bytes(raw, policy=policy.default) for _, _, raw in sink.messages]
            assert all("a accepté" in email.get_body(("plain",)).get_content() or
                       "a été ajoutée" in email.get_body(("plain",)).get_content() for email in emails)
            assert all("<html" in email.get_body(("html",)).get_content() for email in emails)
            subjects = sorted(str(email["Subject"]) for email in emails)
            assert subjects == ["Bench Accountant a accepté votre invitation pour Company 000000",
                                "L'entreprise Company 000000 a été ajoutée à la liste de clients du cabinet Bench CPA"]
            wait_for(lambda: rows(folder, "SELECT state FROM outbox") == [("sent",), ("sent",)],
                     "the outbox rows marked sent")

            # A second accept of the same invitation changes nothing and sends nothing.
            again = client.post(seeded.paths[0] + "/accept", data={"csrf_token": seeded.csrf}, headers=headers)
            assert again.status_code == 409
            # A wrong CSRF token, another site's post, no session: refused, nothing written.
            assert client.post(seeded.paths[1] + "/accept", data={"csrf_token": forged(seeded.csrf)},
                               headers=headers).status_code == 403
            other_browser = floors.serializer(secret, floors.CSRF).dumps("another-browser-id")
            assert client.post(seeded.paths[1] + "/accept", data={"csrf_token": other_browser},
                               headers=headers).status_code == 403
            assert client.post(seeded.paths[1] + "/accept", data={"csrf_token": seeded.csrf},
                               headers={**headers, "Origin": "https://evil.example"}).status_code == 403
            signed_out = client.post(seeded.paths[1] + "/accept", data={"csrf_token": seeded.csrf},
                                     headers={**headers, "Cookie": seeded.cookie.split(";")[0]})
            assert signed_out.status_code == 303 and signed_out.headers["Location"] == "/sign-in"
            assert rows(folder, "SELECT id, state FROM invitations ORDER BY id") == [
                (1, "accepted"), (2, "pending"), (3, "pending")]

            # The next accept still goes through (one durable group each), with its own two emails.
            assert client.post(seeded.paths[2] + "/accept", data={"csrf_token": seeded.csrf},
                               headers=headers).status_code == 303
            wait_for(lambda: len(sink.messages) == 4, "the second accept's emails")
        assert rows(folder, "SELECT count(*) FROM clients")[0][0] == 2
        assert rows(folder, "SELECT count(*) FROM outbox")[0][0] == 4
    finally:
        relay.stop()


@ON_SERVER
def test_the_bench_counts_the_cpu_of_the_backends_of_its_database() -> None:
    """bench/run.py's ``Backends``: the server's processes serving one database, their CPU from /proc."""
    assert SERVER_DATABASES is not None
    url = SERVER_DATABASES.create()
    backends = run.Backends(SERVER_DATABASES.url.render_as_string(hide_password=False), url)
    with psycopg.connect(floors_pg.psycopg_url(url), autocommit=True) as busy, \
            psycopg.connect(floors_pg.psycopg_url(SERVER_DATABASES.create()), autocommit=True) as elsewhere:
        before = backends.cpu()
        assert busy.info.backend_pid in before and elsewhere.info.backend_pid not in before
        busy.execute("SELECT count(*) FROM generate_series(1, 3000000)")  # some 100 ms of the backend's CPU
        after = backends.cpu()
    assert run.Backends.spent(before, after) > 0


def test_group_commit_close_writes_what_is_queued(tmp_path: Path) -> None:
    """``GroupCommit.close`` writes the works queued behind a COMMIT in flight before it returns (the floor's
    first openings fired just before its server stopped once ran on the closed connection, and were lost)."""
    import asyncio

    connection = sqlite3.connect(tmp_path / "floor.db", isolation_level=None, check_same_thread=False)
    connection.execute("CREATE TABLE t (n INTEGER)")

    def insert(n: int) -> Callable[[sqlite3.Connection], None]:
        return lambda c: c.execute("INSERT INTO t VALUES (?)", (n,)) and None

    async def scenario() -> int:
        commit = floors.GroupCommit(connection)
        first = commit.run(insert(1))
        await asyncio.sleep(0)  # the first group starts: its COMMIT goes to the thread
        commit.fire(insert(2))  # queued behind that COMMIT, nobody waiting for it
        await commit.close()
        assert first.done() and first.exception() is None
        return commit.groups

    groups = asyncio.run(scenario())
    connection.close()
    with sqlite3.connect(tmp_path / "floor.db") as check:
        assert sorted(n for (n,) in check.execute("SELECT n FROM t")) == [1, 2]
    assert groups == 2
