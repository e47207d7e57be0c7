"""SQLite's reads on an event loop share one read transaction per turn of the loop
(``daemon.reads.ReadConnections``): never beyond the next turn (a write committed since shows, a
checkpoint is not held back), dropped with its connection on an error, and reads from threads keep
their own lone statements."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from daemon.app import Cabinet
from daemon.db import engine_of, read_connections
from daemon.link_opens import detail_text, invitation_detail
from daemon.prepared import PreparedRead
from daemon.roster import _INVITATION_PAGE
from tests.conftest import Browser, Cli, Env, Mailbox, RunningServer, Seed, csrf_of, link_in, sent_invitation, wait_until


@pytest.fixture
def env(env: Env) -> Env:
    if not env.is_sqlite:
        pytest.skip("PostgreSQL's reads run in threads, one autocommit statement each")
    return env




def _nonce(cabinet: Cabinet, invitation_id: int) -> str:
    """The invitation's nonce (the page's read takes the link's), read on a pooled connection of its own."""
    with engine_of(cabinet.sessions).connect() as connection:
        return str(connection.execute(text("SELECT nonce FROM invitations WHERE id = :id"), {"id": invitation_id}).scalar_one())


def _state(cabinet: Cabinet, invitation_id: int) -> str:
    read = PreparedRead(read_connections(cabinet.sessions), _INVITATION_PAGE)
    row: Any = read.one_or_none(
        id=invitation_id, nonce=_nonce(cabinet, invitation_id), opened_detail=detail_text(invitation_detail(invitation_id)))
    return str(row.state)


def _set_state(env: Env, invitation_id: int, state: str) -> None:
    """Another process's committed write (as a CLI command's)."""
    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE invitations SET state = :state WHERE id = :id"),
                               {"state": state, "id": invitation_id})
    finally:
        engine.dispose()


def _checkpoint(env: Env) -> tuple[int, int, int]:
    """A TRUNCATE checkpoint from another connection: (busy, log frames, checkpointed); busy while any
    connection still reads an older snapshot."""
    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            busy, log, done = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
            return int(busy), int(log), int(done)
    finally:
        engine.dispose()


def test_reads_of_one_turn_share_a_snapshot_and_the_next_turn_sees_what_was_committed(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    invitation_id = sent_invitation(cli, seed, env)

    async def turns() -> list[str]:
        seen = [_state(cabinet, invitation_id)]
        _set_state(env, invitation_id, "revoked")
        seen.append(_state(cabinet, invitation_id))  # the same turn: the same read transaction
        # A thread's read is a lone statement of its own, whatever the loop's turn holds.
        in_thread: list[str] = []
        thread = threading.Thread(target=lambda: in_thread.append(_state(cabinet, invitation_id)))
        thread.start()
        thread.join()
        seen += in_thread
        await asyncio.sleep(0)  # the next turn: the transaction has ended, a new one begins
        seen.append(_state(cabinet, invitation_id))
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(turns()) == ["pending", "pending", "revoked", "revoked"]
    assert _checkpoint(env)[0] == 0  # no snapshot left open once the loop moved on


def test_an_error_drops_the_turns_transaction_and_the_next_read_begins_another(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    invitation_id = sent_invitation(cli, seed, env)
    reads = read_connections(cabinet.sessions)

    async def turn() -> list[str]:
        seen = [_state(cabinet, invitation_id)]
        _set_state(env, invitation_id, "revoked")
        with pytest.raises(DBAPIError):
            reads.execute("SELECT * FROM no_such_table", (), None)
        seen.append(_state(cabinet, invitation_id))  # a fresh transaction: the commit shows
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(turn()) == ["pending", "revoked"]
    assert _checkpoint(env)[0] == 0


def test_the_server_leaves_no_read_transaction_open_between_requests(
    server: RunningServer, browser: Browser, cli: Cli, seed: Seed, env: Env, mailbox: Mailbox
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1)[-1])
    for _ in range(5):
        assert browser.get(link).status_code == 200
    # The turn after the last page's ends its read transaction: a checkpoint then gets every frame.
    wait_until(lambda: _checkpoint(env) == (0, 0, 0), what="a TRUNCATE checkpoint that no reader holds back")


def test_an_accept_shows_on_the_get_its_303_leads_to(
    server: RunningServer, browser: Browser, cli: Cli, seed: Seed, env: Env, mailbox: Mailbox
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1)[-1])
    browser.sign_in(link, seed.accountant)
    page = browser.get(link)
    assert "Accept invitation" in page.text
    firm_id = env.sql("SELECT id FROM firms WHERE name = 'Tremblay CPA'")[0][0]
    accepted = browser.http.post(link + "/accept", data={"csrf_token": csrf_of(page.text), "firm_id": str(firm_id)})
    assert accepted.status_code == 303
    shown = browser.get(accepted.headers["Location"])
    assert "accepted by Marie Tremblay" in shown.text and "Accept invitation" not in shown.text
    # A revoke from another process (the CLI) shows on the next GET (signed out: the kept page).
    cli("invitation", "send", "--company", seed.company, "--email", "other@tremblay.example")
    other = link_in(mailbox.wait("other@tremblay.example", subject="Invitation", count=1)[-1])
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        assert "valid until" in client.get(other).text
        cli("invitation", "revoke", str(env.sql("SELECT max(id) FROM invitations")[0][0]))
        after = client.get(other).text
        assert "withdrew this invitation" in after and "valid until" not in after
