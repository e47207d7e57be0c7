"""The floors: what a minimal, straightforward Python implementation reaches on the link GET and the
accept POST, on the same libraries (aiohttp, sqlite3, itsdangerous's token format, email,
aiosmtplib), doing only the work the product cannot skip — no middlewares, no ORM, no jinja per
request. ``bench/run.py``'s ``floor`` path measures them against the same ceilings, under the same
load, pinned the same way, as Cabinet's ``link_get`` and ``accept``: they are upper bounds for
what Cabinet's ratios could be in Python, not a second product.

    python -m bench.floors get PORT FOLDER PAGE_SIZE [thread|async]
                                                         the invitation page
    python -m bench.floors accept PORT FOLDER RELAY_PORT [email-package|direct] [plain|pipeline]
                                                         the accept, its two emails sent to RELAY_PORT

FOLDER holds the database and the key ``seed`` below wrote; or the key and the name of a PostgreSQL
database ``bench.floors_pg`` seeded (the last arguments are how that path reads and writes).

What each does per request:

- *get*: verifies the itsdangerous-format invitation token (HMAC-SHA1 with a kept keyed HMAC, as
  ``daemon/tokens.py`` does, checked on every request: no cache of verified tokens); one SELECT of the
  invitation with the columns and joins the product's page reads (``roster._invitation_page``); a new
  visitor's random browser id, signed twice (the browser cookie and the CSRF token bound to it) and a
  Set-Cookie; the link's first opening noted (a kept set of opened invitations, loaded at start, and a
  ``link.opened`` event row written through the group commit, not waited for: it is telemetry); the page
  kept as bytes per (row, path, minute, expired) with the visitor's CSRF token put in between, the same
  size as Cabinet's, with the product's security headers.
- *accept*: refuses a cross-site POST (Origin, Sec-Fetch-Site); parses the urlencoded form; verifies the
  signed session cookie (user and firm), the signed browser cookie, and the CSRF token bound to that
  browser; verifies the invitation token; then, in one SQLite transaction (WAL, ``synchronous=FULL``
  like ``daemon/db.py``), the guarded ``UPDATE invitations … WHERE id=? AND nonce=? AND
  state='pending' AND expires_at > now AND the user is a member of the firm``, the client row, the
  event row and two outbox rows. Transactions are group-committed: requests arriving while a COMMIT
  (its fsync) runs in the writer thread wait, and the next group's statements then run on the event
  loop, each in its own SAVEPOINT, with one COMMIT for the group; the 303 goes only once its group is
  durable. A background task in the same process then composes the two emails (French subject, text
  and HTML alternatives) and sends them over one persistent aiosmtplib connection, and marks their
  outbox rows sent in batches. Composed by the email package (``EmailMessage``, ``as_bytes``: about 3 ms
  of CPU each here) or, with ``direct``, written as bytes (about 0.1 ms; Cabinet's ``mailer/mime.py``
  does the same).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import json
import secrets
import sqlite3
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import aiosmtplib
from aiohttp import web
from itsdangerous import URLSafeTimedSerializer

from daemon.web.security import HEADERS, SERVER

DATABASE = "floor.sqlite3"
KEY_FILE = "floor.key"
INVITE, BROWSER, CSRF, SESSION = "cabinet.invite", "cabinet.browser", "cabinet.csrf", "cabinet.session"
INVITATION_TTL = timedelta(days=14)
SESSION_AGE = 12 * 3600
BROWSER_COOKIE, SESSION_COOKIE = "cabinet_browser", "cabinet_session"
FIRM, ACCOUNTANT, ACCOUNTANT_NAME = "Bench CPA", "accountant@bench-cpa.example", "Bench Accountant"
SENDER = "cabinet@cabinet.bench.example"
ZONE = "Europe/Paris"
KEPT_PAGES = 4096

# Cabinet's tables as far as the floor uses them, with Cabinet's keys and indexes on those columns (its
# migrations to 0024: no firm_id-only index on clients or events, events by company and kind, a firm's
# client names unique), and none of its features' (the search's trigram index, the roster's orders and
# counts, the pending invitations' uniqueness): what any product writing these rows would maintain.
SCHEMA = """
CREATE TABLE firms (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, name_key VARCHAR(200) NOT NULL UNIQUE,
    email VARCHAR(320) NOT NULL, created_at DATETIME NOT NULL);
CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(320) NOT NULL UNIQUE, name VARCHAR(200) NOT NULL,
    locale VARCHAR(8) NOT NULL, timezone VARCHAR(64) NOT NULL, created_at DATETIME NOT NULL);
CREATE TABLE memberships (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
    firm_id INTEGER NOT NULL REFERENCES firms(id), UNIQUE (user_id, firm_id));
CREATE TABLE companies (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, name_key VARCHAR(200) NOT NULL UNIQUE,
    kind VARCHAR(20) NOT NULL, admin_email VARCHAR(320) NOT NULL, admin_name VARCHAR(200) NOT NULL,
    admin_locale VARCHAR(8) NOT NULL, subscription VARCHAR(20) NOT NULL, created_at DATETIME NOT NULL);
CREATE INDEX ix_companies_admin_email ON companies (admin_email);
CREATE TABLE invitations (id INTEGER PRIMARY KEY, company_id INTEGER NOT NULL REFERENCES companies(id),
    email VARCHAR(320) NOT NULL, invited_by VARCHAR(320) NOT NULL, nonce VARCHAR(32) NOT NULL,
    state VARCHAR(20) NOT NULL, created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL, decided_at DATETIME,
    firm_id INTEGER REFERENCES firms(id), accepted_by_id INTEGER REFERENCES users(id),
    superseded_by_id INTEGER REFERENCES invitations(id), renewal_requested_at DATETIME);
CREATE INDEX ix_invitations_company_id ON invitations (company_id);
CREATE INDEX ix_invitations_email ON invitations (email);
CREATE TABLE clients (id INTEGER PRIMARY KEY, firm_id INTEGER NOT NULL REFERENCES firms(id),
    company_id INTEGER REFERENCES companies(id), kind VARCHAR(20) NOT NULL, name VARCHAR(200) NOT NULL,
    name_key VARCHAR(200) NOT NULL, email VARCHAR(320), billing VARCHAR(20) NOT NULL, status VARCHAR(30) NOT NULL,
    connected_at DATETIME, created_at DATETIME NOT NULL, UNIQUE (firm_id, company_id), UNIQUE (firm_id, name_key));
CREATE INDEX ix_clients_company_id ON clients (company_id);
CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME NOT NULL, kind VARCHAR(60) NOT NULL,
    actor VARCHAR(320) NOT NULL, channel VARCHAR(20) NOT NULL, firm_id INTEGER REFERENCES firms(id),
    company_id INTEGER REFERENCES companies(id), client_id INTEGER REFERENCES clients(id), detail TEXT NOT NULL);
CREATE INDEX ix_events_company_kind ON events (company_id, kind);
CREATE INDEX ix_events_client_id ON events (client_id);
CREATE TABLE outbox (id INTEGER PRIMARY KEY, message_id VARCHAR(255) NOT NULL UNIQUE, ref VARCHAR(24) NOT NULL UNIQUE,
    kind VARCHAR(60) NOT NULL, envelope_from VARCHAR(320) NOT NULL, recipient VARCHAR(320) NOT NULL,
    subject VARCHAR(500) NOT NULL, state VARCHAR(20) NOT NULL, attempts INTEGER NOT NULL, created_at DATETIME NOT NULL,
    next_attempt_at DATETIME NOT NULL, sent_at DATETIME, invitation_id INTEGER REFERENCES invitations(id),
    company_id INTEGER REFERENCES companies(id), firm_id INTEGER REFERENCES firms(id), audience VARCHAR(20),
    content TEXT);
CREATE INDEX ix_outbox_invitation_id ON outbox (invitation_id);
CREATE INDEX ix_outbox_state ON outbox (state, next_attempt_at);
"""


# --- tokens: itsdangerous's URL-safe timed format ---------------------------------------------------

def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


class Tokens:
    """Signs and verifies tokens byte for byte as ``URLSafeTimedSerializer(secret, salt)`` with HMAC-SHA1
    does (``serializer`` below makes them), with one keyed HMAC per salt, copied per signature."""

    def __init__(self, secret: str) -> None:
        self._macs = {
            salt: hmac.new(hashlib.sha1(salt.encode() + b"signer" + secret.encode()).digest(), digestmod=hashlib.sha1)
            for salt in (INVITE, BROWSER, CSRF, SESSION)
        }

    def _mac(self, salt: str, value: bytes) -> bytes:
        mac = self._macs[salt].copy()
        mac.update(value)
        return mac.digest()

    def sign_random(self, salt: str, text: str) -> str:
        """A token for a random URL-safe string (incompressible: itsdangerous would not compress it)."""
        now = int(time.time())
        value = _b64(b'"' + text.encode() + b'"') + b"." + _b64(now.to_bytes((now.bit_length() + 7) // 8, "big"))
        return (value + b"." + _b64(self._mac(salt, value))).decode()

    def verify(self, salt: str, token: str, max_age: float | None) -> Any:
        """The payload, or None for a forged, malformed or too old token."""
        try:
            signed = token.encode("ascii")
            value, _, signature = signed.rpartition(b".")
            if not hmac.compare_digest(_unb64(signature), self._mac(salt, value)):
                return None
            body, _, stamp = value.rpartition(b".")
            if max_age is not None and not 0 <= time.time() - int.from_bytes(_unb64(stamp), "big") <= max_age:
                return None
            if body[:1] == b".":
                return json.loads(zlib.decompress(_unb64(body[1:])).decode())
            return json.loads(_unb64(body).decode())  # a str: json.loads of bytes first guesses their encoding
        except (ValueError, UnicodeError, zlib.error):
            return None


def serializer(secret: str, salt: str) -> URLSafeTimedSerializer:
    """itsdangerous's own serializer for ``salt``, as Cabinet's ``LinkSigner`` configures it."""
    return URLSafeTimedSerializer(secret, salt=salt, signer_kwargs={"digest_method": hashlib.sha1})


# --- the database -----------------------------------------------------------------------------------

def _text(moment: datetime) -> str:
    """A UTC datetime as SQLAlchemy's SQLite DateTime stores it."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _now_text() -> str:
    return _text(datetime.now(timezone.utc))


def connect(folder: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(folder / DATABASE, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=10000")
    return connection


@dataclass
class Seeded:
    paths: list[str]  # /invitations/<token>, one per pending invitation
    cookie: str  # a signed-in accountant's Cookie header (session and browser)
    csrf: str  # the CSRF token bound to that browser


def seed(folder: Path, count: int, database: str = "") -> Seeded:
    """A firm, its accountant (member, signed in), ``count`` companies each with a pending invitation
    for that accountant; the tokens made by itsdangerous itself. ``database``: an empty PostgreSQL
    database's URL to seed instead of SQLite (``bench.floors_pg``)."""
    if database:
        from bench import floors_pg  # it builds on this module

        return floors_pg.seed(folder, count, database)
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    (folder / KEY_FILE).write_text(secret + "\n", encoding="utf-8")
    now = datetime.now(timezone.utc)
    created, expires = _text(now), _text(now + INVITATION_TTL)
    connection = connect(folder)
    try:
        connection.executescript(SCHEMA)
        connection.execute("BEGIN")
        connection.execute("INSERT INTO firms VALUES (1, ?, ?, ?, ?)", (FIRM, FIRM.casefold(), "office@bench-cpa.example",
                                                                        created))
        connection.execute("INSERT INTO users VALUES (1, ?, ?, 'fr', ?, ?)", (ACCOUNTANT, ACCOUNTANT_NAME, ZONE, created))
        connection.execute("INSERT INTO memberships VALUES (1, 1, 1)")
        nonces = [secrets.token_urlsafe(12) for _ in range(count)]
        connection.executemany(
            "INSERT INTO companies VALUES (?, ?, ?, 'business', ?, ?, 'fr', 'self-paid', ?)",
            [(i + 1, f"Company {i:06d}", f"company {i:06d}", f"admin{i}@company-{i}.example", f"Admin {i}", created)
             for i in range(count)],
        )
        connection.executemany(
            "INSERT INTO invitations (id, company_id, email, invited_by, nonce, state, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            [(i + 1, i + 1, ACCOUNTANT, f"admin{i}@company-{i}.example", nonces[i], created, expires)
             for i in range(count)],
        )
        connection.execute("COMMIT")
    finally:
        connection.close()
    return signed_in(secret, nonces)


def signed_in(secret: str, nonces: list[str]) -> Seeded:
    """The seeded invitations' links, and the accountant's cookies and CSRF token, signed with ``secret``."""
    count = len(nonces)
    invite = serializer(secret, INVITE)
    paths = [f"/invitations/{invite.dumps([i + 1, nonces[i]])}" for i in range(count)]
    browser_id = secrets.token_urlsafe(32)
    browser = serializer(secret, BROWSER).dumps(browser_id)
    session = serializer(secret, SESSION).dumps([1, 1])  # user 1, of firm 1
    cookie = f"{BROWSER_COOKIE}={browser}; {SESSION_COOKIE}={session}"
    return Seeded(paths, cookie, serializer(secret, CSRF).dumps(browser_id))


class GroupCommit:
    """Write transactions on one connection, a group per COMMIT.

    ``run(work)`` queues ``work(connection)``; when no COMMIT is in flight the queued works run on the
    event loop (SQLite statements on a cached page take microseconds), each in a SAVEPOINT so one
    failing undoes only itself, and the group's COMMIT — its fsync — goes to the writer thread, which
    holds no GIL while it waits. Works queued meanwhile form the next group. Each caller gets its
    work's result or error once its group is durable."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any] | None]] = []
        self._committing = False
        self._scheduled = False
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._woken: asyncio.Future[None] | None = None  # ``close`` waiting for the groups in flight
        self.groups = 0

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._queue(work, future)
        return future

    def fire(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        """``work`` written with the next group, nobody waiting for it (telemetry)."""
        self._queue(work, None)

    def _queue(self, work: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any] | None) -> None:
        self._queued.append((work, future))
        if not self._committing and not self._scheduled:
            self._scheduled = True  # after the requests already parsed in this turn of the loop
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        group, self._queued = self._queued, []
        connection = self._connection
        results: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]] = []
        connection.execute("BEGIN IMMEDIATE")
        for work, future in group:
            connection.execute("SAVEPOINT work")
            try:
                result = work(connection)
            except sqlite3.Error as exc:
                connection.execute("ROLLBACK TO work")
                results.append((future, None, exc))
            else:
                results.append((future, result, None))
            connection.execute("RELEASE work")
        self._committing = True
        self.groups += 1
        committed = asyncio.get_running_loop().run_in_executor(self._thread, connection.execute, "COMMIT")
        committed.add_done_callback(lambda done: self._answer(done, results))

    def _answer(self, committed: asyncio.Future[Any], results: list[tuple[Any, Any, BaseException | None]]) -> None:
        self._committing = False
        failed = committed.exception()
        if failed is not None:
            self._connection.execute("ROLLBACK")
        for future, result, error in results:
            if future is None or future.done():
                continue
            if failed is not None or error is not None:
                future.set_exception(failed or error)
            else:
                future.set_result(result)
        if self._queued and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def close(self) -> None:
        """Write what is queued, then stop: a first opening fired just before the server stops is written
        before its connection closes (it once ran on the closed connection)."""
        while self._queued or self._scheduled or self._committing:
            self._woken = asyncio.get_running_loop().create_future()
            await self._woken
        self._thread.shutdown(wait=True)


# --- the invitation page ---------------------------------------------------------------------------

INVITATION_ROW = """
SELECT i.id, i.nonce, i.company_id, i.firm_id, i.email, i.invited_by, i.state, i.created_at, i.expires_at,
       i.decided_at, i.superseded_by_id, i.renewal_requested_at, c.name, f.name, a.name, a.email,
       (SELECT u.timezone FROM users u WHERE u.email = i.email)
FROM invitations i JOIN companies c ON c.id = i.company_id LEFT JOIN firms f ON f.id = i.firm_id
LEFT JOIN users a ON a.id = i.accepted_by_id WHERE i.id = ?
"""
OPENED_EVENT = ("INSERT INTO events (at, kind, actor, channel, firm_id, company_id, detail) "
                "VALUES (?, 'link.opened', ?, 'link', ?, ?, ?)")


def _timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def page_parts(row: tuple[Any, ...], path: str, expired: bool, size: int, token_length: int) -> tuple[bytes, bytes]:
    """The page around its CSRF token, padded to ``size`` bytes with it (Cabinet's page's size)."""
    zone = ZoneInfo(row[16] or ZONE)
    expires = row[8] if isinstance(row[8], datetime) else (  # PostgreSQL's an aware datetime, SQLite's text
        datetime.strptime(row[8], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc))
    hours = max(0, int((expires - datetime.now(timezone.utc)).total_seconds() // 3600))
    state = "expirée" if expired and row[6] == "pending" else row[6]
    head = (
        '<!doctype html>\n<html lang="fr"><head><meta charset="utf-8"><title>Invitation — Cabinet</title>'
        '<link rel="stylesheet" href="/static/cabinet.css"></head><body><main>'
        f"<h1>Invitation de {row[12]}</h1><p>{row[5]} invite {row[4]} à suivre la comptabilité de {row[12]}.</p>"
        f"<p>État : {state}. Valable jusqu'au {expires.astimezone(zone):%d/%m/%Y à %H:%M} (encore {hours} heures).</p>"
        f'<form method="post" action="{path}/accept"><input type="hidden" name="csrf_token" value="'
    )
    tail = '"><button type="submit">Accepter</button></form></main>{filler}</body></html>\n'
    filler = size - len(head.encode()) - len(tail.encode()) - token_length - len("<!---->") + len("{filler}")
    return head.encode(), tail.replace("{filler}", "<!--" + "x" * max(0, filler) + "-->").encode()


def invitation_app(folder: Path, page_size: int, read_mode: str = "thread") -> web.Application:
    """The invitation page; on PostgreSQL when ``folder`` names a database (``bench.floors_pg``, its row
    read as ``read_mode`` says)."""
    from bench import floors_pg  # it builds on this module

    url = floors_pg.database_url(folder)
    if url is not None:
        return floors_pg.invitation_app(folder, page_size, url, read_mode)
    tokens = Tokens((folder / KEY_FILE).read_text(encoding="utf-8").strip())
    reader = connect(folder)
    writer = connect(folder)
    opened = {row[0] for row in reader.execute("SELECT json_extract(detail, '$.invitation_id') FROM events "
                                               "WHERE kind = 'link.opened'")}
    token_length = len(tokens.sign_random(CSRF, secrets.token_urlsafe(32)))
    pages: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
    expiries: dict[str, float] = {}  # a stored date's text as a timestamp
    base = {**HEADERS, "Server": SERVER, "Content-Type": "text/html; charset=utf-8"}
    max_age = INVITATION_TTL.total_seconds()
    commit = GroupCommit(writer)
    select = INVITATION_ROW

    async def show(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        payload = tokens.verify(INVITE, token, max_age)
        if type(payload) is not list or len(payload) != 2:
            raise web.HTTPNotFound()
        row = reader.execute(select, (payload[0],)).fetchone()
        if row is None or row[1] != payload[1]:
            raise web.HTTPNotFound()
        invitation_id = row[0]
        if invitation_id not in opened:
            opened.add(invitation_id)
            detail = f'{{"invitation_id": {invitation_id}, "purpose": "invitation", "ref": {invitation_id}}}'
            commit.fire(lambda c: c.execute(OPENED_EVENT, (_now_text(), row[4], row[3], row[2], detail)))
        now = time.time()
        expires = expiries.get(row[8])
        if expires is None:
            if len(expiries) >= KEPT_PAGES:
                expiries.clear()
            expires = expiries[row[8]] = _timestamp(row[8])
        expired = now >= expires
        key = (row, request.path, int(now // 60), expired)
        parts = pages.get(key)
        if parts is None:
            if len(pages) >= KEPT_PAGES:
                pages.clear()
            parts = pages[key] = page_parts(row, request.path, expired, page_size, token_length)
        browser_id = secrets.token_urlsafe(32)
        csrf = tokens.sign_random(CSRF, browser_id)
        headers = dict(base)
        headers["Set-Cookie"] = f"{BROWSER_COOKIE}={tokens.sign_random(BROWSER, browser_id)}; HttpOnly; Path=/; SameSite=Lax"
        return web.Response(body=parts[0] + csrf.encode() + parts[1], headers=headers)

    async def closing(app: web.Application) -> None:
        await commit.close()
        reader.close()
        writer.close()

    app = web.Application()
    app.router.add_get("/invitations/{token}", show)
    app.on_cleanup.append(closing)
    return app


# --- the accept --------------------------------------------------------------------------------------

ACCEPT = """
UPDATE invitations SET state = 'accepted', decided_at = ?, firm_id = ?, accepted_by_id = ?
WHERE id = ? AND nonce = ? AND state = 'pending' AND expires_at > ?
  AND EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = ? AND m.firm_id = ?)
RETURNING company_id, email, (SELECT name FROM users WHERE id = ?), (SELECT name FROM firms WHERE id = ?)
"""
CLIENT = """
INSERT INTO clients (firm_id, company_id, kind, name, name_key, email, billing, status, connected_at, created_at)
SELECT ?, id, kind, name, name_key, admin_email, subscription, 'active', ?, ? FROM companies WHERE id = ?
RETURNING id, name, email
"""
EVENT = ("INSERT INTO events (at, kind, actor, channel, firm_id, company_id, client_id, detail) "
         "VALUES (?, 'invitation.accepted', ?, 'link', ?, ?, ?, ?)")
OUTBOX = (
    "INSERT INTO outbox (message_id, ref, kind, envelope_from, recipient, subject, state, attempts, created_at, "
    "next_attempt_at, invitation_id, company_id, firm_id, audience, content) "
    "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, ?)"
)
SENT = "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = ? WHERE state = 'pending' AND id IN "


@dataclass(frozen=True)
class Email:
    outbox_id: int
    message_id: str
    recipient: str
    subject: str
    kind: str
    facts: dict[str, str]


@dataclass(frozen=True)
class AcceptSql:
    """The accept's statements in one driver's parameter style (``bench.floors_pg`` has PostgreSQL's)."""
    accept: str
    client: str
    event: str
    outbox: str


SQLITE_ACCEPT = AcceptSql(ACCEPT, CLIENT, EVENT, OUTBOX)


def accept_rows(c: Any, sql: AcceptSql, now: Any, invitation_id: int, nonce: str, user_id: int, firm_id: int,
                outbox_id: Callable[[Any], int]) -> list[Email] | None:
    """The accept's guarded UPDATE and its client, event and two outbox rows on ``c`` (sqlite3 or psycopg),
    in the caller's transaction; None when the UPDATE found nothing to change. ``outbox_id`` reads an
    outbox INSERT's id from its cursor, once both are sent (psycopg's pipeline mode sends them together)."""
    row = c.execute(sql.accept, (now, firm_id, user_id, invitation_id, nonce, now, user_id, firm_id, user_id,
                                 firm_id)).fetchone()
    if row is None:
        return None  # not pending any more (or not this link, or not a member): nothing written
    company_id, accountant, accountant_name, firm = row
    client_id, company, admin = c.execute(sql.client, (firm_id, now, now, company_id)).fetchone()
    c.execute(sql.event, (now, accountant, firm_id, company_id, client_id,
                          f'{{"client_id": {client_id}, "invitation_id": {invitation_id}}}'))
    facts = {"company": company, "firm": firm, "accountant_name": accountant_name}
    content = json.dumps(facts)
    inserted = []
    for kind, recipient, subject, audience in (
        ("invitation_accepted", admin, f"{accountant_name} a accepté votre invitation pour {company}", "client"),
        ("client_added", accountant, f"L'entreprise {company} a été ajoutée à la liste de clients du cabinet {firm}",
         "firm"),
    ):
        ref = secrets.token_hex(8)
        message_id = f"<{ref}.{invitation_id}@cabinet.bench.example>"
        cursor = c.execute(sql.outbox, (message_id, ref, kind, f"bounce+{ref}@cabinet.bench.example", recipient,
                                        subject, now, now, invitation_id, company_id, firm_id, audience, content))
        inserted.append((cursor, message_id, recipient, subject, kind))
    return [Email(outbox_id(cursor), message_id, recipient, subject, kind, facts)
            for cursor, message_id, recipient, subject, kind in inserted]


def _accept_write(invitation_id: int, nonce: str, user_id: int, firm_id: int) -> Callable[[sqlite3.Connection],
                                                                                            list[Email] | None]:
    return lambda c: accept_rows(c, SQLITE_ACCEPT, _now_text(), invitation_id, nonce, user_id, firm_id,
                                 lambda cursor: int(cursor.lastrowid or 0))


TEXT = {
    "invitation_accepted": (
        "Bonjour,\n\n{accountant_name} ({firm}) a accepté votre invitation et suit désormais la comptabilité de "
        "{company}.\n\nVous n'avez rien d'autre à faire. Si vous n'êtes pas à l'origine de cette invitation, "
        "répondez à ce message : nous retirerons l'accès.\n\nPour gérer les accès de {company}, utilisez le lien "
        "reçu avec votre inscription.\n\n— {firm}, via Cabinet\n"
    ),
    "client_added": (
        "Bonjour,\n\nL'entreprise {company} a été ajoutée à la liste de clients du cabinet {firm}, suite à "
        "l'acceptation de l'invitation par {accountant_name}.\n\nLa fiche du client est dans Cabinet : "
        "produits, facturation et contacts. Répondez à ce message pour écrire à l'administrateur de {company}."
        "\n\n— Cabinet\n"
    ),
}
HTML = (
    '<!doctype html><html lang="fr"><head><meta charset="utf-8"><meta name="viewport" '
    'content="width=device-width"><title>{subject}</title></head><body style="margin:0;padding:0;background:#f4f4f5;'
    'font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;color:#18181b"><table role="presentation" '
    'width="100%" cellpadding="0" cellspacing="0"><tr><td align="center" style="padding:24px"><table '
    'role="presentation" width="600" cellpadding="0" cellspacing="0" style="background:#ffffff;border-radius:8px;'
    'padding:32px"><tr><td><h1 style="font-size:20px;margin:0 0 16px">{subject}</h1>{paragraphs}</td></tr><tr><td '
    'style="padding-top:24px;font-size:12px;color:#71717a">Cet e-mail vous a été envoyé par Cabinet pour {firm}. '
    'Répondez-y pour écrire à la personne concernée.</td></tr></table></td></tr></table></body></html>\n'
)


def _bodies(email: Email) -> tuple[str, str]:
    text = TEXT[email.kind].format(**email.facts)
    paragraphs = "".join(f'<p style="margin:0 0 12px;line-height:1.5">{p}</p>' for p in text.split("\n\n"))
    return text, HTML.format(subject=email.subject, paragraphs=paragraphs, firm=email.facts["firm"])


def compose(email: Email) -> bytes:
    """The email as the product's worker must build it, by the email package: headers, French subject,
    text and HTML alternatives."""
    text, html = _bodies(email)
    message = EmailMessage()
    message["From"] = f"Cabinet <{SENDER}>"
    message["To"] = email.recipient
    message["Subject"] = email.subject
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = email.message_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def _encoded_words(text: str) -> bytes:
    """A non-ASCII header value as RFC 2047 "B" encoded-words, one per line (each under 78 characters)."""
    data = text.encode()
    chunks = []
    start = 0
    while start < len(data):
        end = min(start + 42, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never split a character
            end -= 1
        chunks.append(b"=?utf-8?b?" + base64.b64encode(data[start:end]) + b"?=")
        start = end
    return b"\n ".join(chunks)


def compose_direct(email: Email) -> bytes:
    """The same email written as bytes, without the email package's objects (as ``mailer/mime.py`` does
    in the product): plain ASCII headers as they are, the subject as encoded-words, both bodies
    quoted-printable (``binascii.b2a_qp``)."""
    text, html = _bodies(email)
    subject = email.subject
    boundary = b"===============" + secrets.token_hex(10).encode() + b"=="
    return b"".join([
        b"From: Cabinet <", SENDER.encode(), b">\nTo: ", email.recipient.encode(), b"\nSubject: ",
        subject.encode() if subject.isascii() else _encoded_words(subject),
        b"\nDate: ", format_datetime(datetime.now(timezone.utc)).encode(), b"\nMessage-ID: ", email.message_id.encode(),
        b'\nMIME-Version: 1.0\nContent-Type: multipart/alternative;\n boundary="', boundary, b'"\n\n--', boundary,
        b'\nContent-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: quoted-printable\n\n',
        binascii.b2a_qp(text.encode()), b"\n--", boundary,
        b'\nContent-Type: text/html; charset="utf-8"\nContent-Transfer-Encoding: quoted-printable\n\n',
        binascii.b2a_qp(html.encode()), b"\n--", boundary, b"--\n",
    ])


def _mark_sent(ids: tuple[int, ...]) -> Callable[[sqlite3.Connection], Any]:
    return lambda c: c.execute(SENT + f"({','.join('?' * len(ids))})", (_now_text(), *ids))


class Sender:
    """Sends queued emails over one persistent relay connection, and marks them sent in batches.

    One task composes (CPU on the loop), another sends (waiting on the relay's answers): the next email
    is composed while the relay answers the one before; at most two wait composed."""

    def __init__(self, relay_port: int, commit: Any, composer: Callable[[Email], bytes],
                 mark_sent: Callable[[tuple[int, ...]], Callable[[Any], Any]] | None = None) -> None:
        self._relay_port = relay_port
        self._mark_sent = mark_sent or _mark_sent
        self._composer = composer
        self._commit = commit
        self.queue: asyncio.Queue[Email] = asyncio.Queue()
        self._composed: asyncio.Queue[tuple[Email, bytes]] = asyncio.Queue(maxsize=2)
        self._smtp: aiosmtplib.SMTP | None = None

    async def _send(self, message: bytes, recipient: str) -> None:
        for attempt in (1, 2):  # a dropped connection is reopened once
            try:
                if self._smtp is None or not self._smtp.is_connected:
                    self._smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self._relay_port, use_tls=False,
                                                 start_tls=False)
                    await self._smtp.connect()
                await self._smtp.sendmail(SENDER, [recipient], message)
                return
            except aiosmtplib.SMTPServerDisconnected:
                self._smtp = None
                if attempt == 2:
                    raise

    async def compose(self) -> None:
        while True:
            email = await self.queue.get()
            await self._composed.put((email, self._composer(email)))

    async def send(self) -> None:
        while True:
            sent = []
            while True:
                email, message = await self._composed.get()
                await self._send(message, email.recipient)
                sent.append(email.outbox_id)
                if (self._composed.empty() and self.queue.empty()) or len(sent) >= 64:
                    break
            await self._commit.run(self._mark_sent(tuple(sent)))

    async def close(self) -> None:
        if self._smtp is not None and self._smtp.is_connected:
            await self._smtp.quit()


COMPOSERS = {"email-package": compose, "direct": compose_direct}


def accept_app(folder: Path, relay_port: int, origin: str, composer: str = "email-package",
               write_mode: str = "plain") -> web.Application:
    """The accept; on PostgreSQL when ``folder`` names a database (``bench.floors_pg``, its transactions
    written as ``write_mode`` says)."""
    from bench import floors_pg  # it builds on this module

    tokens = Tokens((folder / KEY_FILE).read_text(encoding="utf-8").strip())
    url = floors_pg.database_url(folder)
    commit: Any
    if url is None:
        writer: sqlite3.Connection | None = connect(folder)
        commit = GroupCommit(writer)  # type: ignore[arg-type]
        accept_write: Callable[[int, str, int, int], Callable[[Any], Any]] = _accept_write
        sender = Sender(relay_port, commit, COMPOSERS[composer])
    else:
        if write_mode not in floors_pg.WRITE_MODES:
            raise SystemExit(f"unknown write mode {write_mode!r}: {', '.join(floors_pg.WRITE_MODES)}")
        writer = None
        commit = floors_pg.Writers(url, pipeline=write_mode == "pipeline")
        accept_write = floors_pg.accept_write
        sender = Sender(relay_port, commit, COMPOSERS[composer], floors_pg.mark_sent)
    invitation_age = INVITATION_TTL.total_seconds()
    refused = {**HEADERS, "Server": SERVER}

    async def accept(request: web.Request) -> web.Response:
        headers = request.headers
        fetch_site = headers.get("Sec-Fetch-Site")
        sent_origin = headers.get("Origin")
        if (fetch_site is not None and fetch_site not in ("same-origin", "none")) or (
                sent_origin is not None and sent_origin.lower() != origin):
            return web.Response(status=403, text="cross-site", headers=refused)
        form = await request.post()
        cookies = request.cookies
        session = tokens.verify(SESSION, cookies.get(SESSION_COOKIE, ""), SESSION_AGE)
        if type(session) is not list or len(session) != 2:
            return web.Response(status=303, headers={**refused, "Location": "/sign-in"})
        browser = tokens.verify(BROWSER, cookies.get(BROWSER_COOKIE, ""), None)
        bound = tokens.verify(CSRF, str(form.get("csrf_token", "")), SESSION_AGE)
        if type(browser) is not str or type(bound) is not str or not secrets.compare_digest(browser, bound):
            return web.Response(status=403, text="csrf", headers=refused)
        token = request.match_info["token"]
        invitation = tokens.verify(INVITE, token, invitation_age)
        if type(invitation) is not list or len(invitation) != 2:
            raise web.HTTPNotFound()
        emails = await commit.run(accept_write(invitation[0], invitation[1], session[0], session[1]))
        if emails is None:
            return web.Response(status=409, text="not pending", headers=refused)
        for email in emails:
            sender.queue.put_nowait(email)
        return web.Response(status=303, headers={**refused, "Location": f"/invitations/{token}"})

    async def sending(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(sender.compose()), asyncio.create_task(sender.send())]
        yield
        for task in tasks:
            task.cancel()
        await sender.close()
        await commit.close()
        if writer is not None:
            writer.close()

    app = web.Application()
    app.router.add_post("/invitations/{token}/accept", accept)
    app.cleanup_ctx.append(sending)
    return app


def main(argv: list[str]) -> None:
    kind, port, folder = argv[0], int(argv[1]), Path(argv[2])
    if kind == "get":
        app = invitation_app(folder, int(argv[3]), *argv[4:5])
    elif kind == "accept":
        app = accept_app(folder, int(argv[3]), f"http://127.0.0.1:{port}", *argv[4:6])
    else:
        raise SystemExit(f"unknown floor {kind!r}")
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
