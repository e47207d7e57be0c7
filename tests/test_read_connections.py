"""The hot reads' kept connections (daemon.db.ReadConnections): one statement each, outside the pool,
committed data only, and a connection the server dropped is replaced without the reader noticing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Integer, String, bindparam, cast, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from daemon.app import Cabinet
from daemon.db import engine_of, read_connections
from daemon.faults import storage_fault
from daemon.link_opens import detail_text, invitation_detail
from daemon.prepared import PreparedRead
from daemon.roster import _INVITATION_PAGE
from tests.conftest import Browser, Cli, Env, Mailbox, RunningServer, Seed, link_in, sent_invitation




def _nonce(cabinet: Cabinet, invitation_id: int) -> str:
    """The invitation's nonce (the page's read takes the link's), read on a pooled connection of its own."""
    with engine_of(cabinet.sessions).connect() as connection:
        return str(connection.execute(text("SELECT nonce FROM invitations WHERE id = :id"), {"id": invitation_id}).scalar_one())


def _page(cabinet: Cabinet, invitation_id: int) -> Any:
    read = PreparedRead(read_connections(cabinet.sessions), _INVITATION_PAGE)
    return read.one_or_none(
        id=invitation_id, nonce=_nonce(cabinet, invitation_id), opened_detail=detail_text(invitation_detail(invitation_id)))


def test_a_read_sees_committed_rows_only_and_leaves_no_transaction_open(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    invitation_id = sent_invitation(cli, seed, env)
    assert _page(cabinet, invitation_id).state == "pending"
    other = create_engine(env.database_url, poolclass=NullPool)
    try:
        with other.connect() as connection:
            transaction = connection.begin()
            changed = connection.execute(text("UPDATE invitations SET state = 'revoked' WHERE id = :id"),
                                         {"id": invitation_id})
            assert changed.rowcount == 1
            # Not committed yet: the read does not see it (and on SQLite, a writer holding its lock
            # does not block it).
            assert _page(cabinet, invitation_id).state == "pending"
            transaction.commit()
        # Committed: the very next read sees it, on the same kept connection (no snapshot held over
        # from the read before).
        assert _page(cabinet, invitation_id).state == "revoked"
    finally:
        other.dispose()
    if not env.is_sqlite:  # the kept connection sits idle, not "idle in transaction" on a snapshot
        assert env.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND state = 'idle in transaction'") == [(0,)]
    assert engine_of(cabinet.sessions).pool.checkedout() == 0


class _Cursors:
    """The cursors the kept connections run statements on, heard through ``before_cursor_execute``
    (kept referenced, so an identity compared is never a recycled one). The kept reads tell it no
    SQLAlchemy connection; the pool's statements (``_nonce``) do, and are not counted."""

    def __init__(self, cabinet: Cabinet) -> None:
        self.seen: list[Any] = []
        self._engine = engine_of(cabinet.sessions)
        event.listen(self._engine, "before_cursor_execute", self._heard)

    def _heard(self, connection: Any, cursor: Any, *_: Any) -> None:
        if connection is None:
            self.seen.append(cursor)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._heard)


def test_a_connection_the_server_dropped_is_replaced_on_the_next_read_and_takes_its_cursors_with_it(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    if env.is_sqlite:
        pytest.skip("a PostgreSQL backend is what this terminates")
    invitation_id = sent_invitation(cli, seed, env)
    reads = read_connections(cabinet.sessions)
    cursors = _Cursors(cabinet)
    try:
        ((before,),) = reads.execute("SELECT pg_backend_pid()", {}, 1)
        assert _page(cabinet, invitation_id).state == "pending"
        dropped = cursors.seen[-1]
        # An administrator (or a restart, or an idle timeout) ends the kept connection's backend.
        assert env.sql("SELECT pg_terminate_backend(:pid)", pid=before) == [(True,)]
        # The next read tries the dropped connection's cursor once, finds it lost, drops it and reads on
        # a new connection: the caller sees its row.
        assert _page(cabinet, invitation_id).state == "pending"
        lost, fresh = cursors.seen[-2:]
        assert lost is dropped and fresh is not dropped and fresh.connection is not dropped.connection
        assert _page(cabinet, invitation_id).state == "pending"
        assert cursors.seen[-1] is fresh  # the new connection's cursor is the one kept now
        assert dropped.connection.closed
        ((after,),) = reads.execute("SELECT pg_backend_pid()", {}, 1)
        assert after != before
        assert after == fresh.connection.info.backend_pid
        assert env.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", pid=before) == [(0,)]
    finally:
        cursors.close()


def test_a_database_that_is_gone_is_a_storage_fault_even_after_reads_kept_a_connection(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    if not env.is_sqlite:
        pytest.skip("the SQLite file is what this takes away")
    invitation_id = sent_invitation(cli, seed, env)
    assert _page(cabinet, invitation_id).state == "pending"  # a connection is kept now
    # Disposing of the engine (as after a fault) lets go of the kept connections too: the next read
    # opens the file again, and finds it gone.
    engine_of(cabinet.sessions).dispose()
    database = env.database
    assert not isinstance(database, str)
    hidden = database.with_name(database.name + ".away")
    database.rename(hidden)
    database.mkdir()
    try:
        with pytest.raises(DBAPIError) as raised:
            _page(cabinet, invitation_id)
        assert storage_fault(raised.value) is not None
    finally:
        database.rmdir()
        hidden.rename(database)
    assert _page(cabinet, invitation_id).state == "pending"  # and reads again once it is back


def test_the_server_reads_again_after_the_database_server_dropped_its_connections(
    server: RunningServer, browser: Browser, seed: Seed, cli: Cli, env: Env, mailbox: Mailbox
) -> None:
    if env.is_sqlite:
        pytest.skip("PostgreSQL backends are what this terminates")
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1)[-1])
    assert browser.get(link).status_code == 200
    browser.sign_in(link, seed.accountant)
    assert "Marie Tremblay" in browser.get(link).text  # the signed-in visitor's read as well as the page's
    # Every connection the server holds (the pool's, the kept ones for reads in threads and on the
    # event loop) ends, as in a database restart.
    ((ended,),) = env.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert ended >= 1
    page = browser.get(link)
    assert page.status_code == 200 and seed.company in page.text and "Marie Tremblay" in page.text


def test_a_kept_connection_reruns_a_statement_on_its_cursor_and_a_failed_read_takes_its_cursors_with_it(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    if env.is_sqlite:
        pytest.skip("SQLite's reads take a cursor each (PostgreSQL's keep one per statement)")
    invitation_id = sent_invitation(cli, seed, env)
    reads = read_connections(cabinet.sessions)
    failing = PreparedRead(reads, select(cast(bindparam("text", type_=String), Integer).label("number")))
    cursors = _Cursors(cabinet)
    try:
        assert _page(cabinet, invitation_id).state == "pending"
        assert _page(cabinet, invitation_id).state == "pending"
        first, second = cursors.seen
        assert second is first  # the same statement on the same kept connection: its cursor again
        # A read that fails on the server surfaces as before, and its connection (with its cursors) goes.
        with pytest.raises(DBAPIError) as raised:
            failing.one_or_none(text="not a number")
        assert not raised.value.connection_invalidated
        assert storage_fault(raised.value) is None  # the statement's fault, not the database's
        assert first.connection.closed
        assert _page(cabinet, invitation_id).state == "pending"  # the reads after it still work
        after = cursors.seen[-1]
        assert after is not first and not after.connection.closed
        assert failing.one_or_none(text="12") == (12,)  # and that statement too, on a new connection
    finally:
        cursors.close()
