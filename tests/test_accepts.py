"""``Accepts``: the accepts in flight at once written together, on SQLite and on PostgreSQL.

Each test awaits the real service (``Cabinet.accepts``, as the link handler does) on a real database;
the accepts are started together on one event loop, so they make one batch (the first batch's writer
starts only once every accept has joined it). What must hold whatever the batching: each accept gets
its own outcome, a lost race is decided again and told what happened, a failing accept fails alone,
and a batch is one commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from dataclasses import replace
from typing import Any, Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from daemon.accepts import Accepts
from daemon.arrivals import Arrivals
from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.onboarding import NewClient
from daemon.roster import AcceptResult, InvitationUnavailable, Roster
from mailer.maildir import _delivery_order, list_mail
from tests.conftest import PASSWORD, Cli, Env, FakeClock, invitation_token

ACCOUNTANT, FIRM = "marie@tremblay.example", "Tremblay CPA"
COMPANIES = ["Boulangerie Roy"] + [f"Atelier {n}" for n in range(4)]
# A safety net for a broken test, never a pace: the two instances meet as soon as both arrive.
MEETING_TIMEOUT = 120


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    cli("firm", "add", FIRM, "--email", "bureau@tremblay.example")
    cli("staff", "add", ACCOUNTANT, "--name", "Marie Tremblay", "--firm", FIRM, "--password-stdin",
        input=PASSWORD + "\n")
    for n, company in enumerate(COMPANIES):
        cli("company", "add", company, "--admin-email", f"admin{n}@company.example", "--admin-name", f"Admin {n}",
            "--locale", "en")
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


def user_id(cabinet: Cabinet) -> int:
    return cabinet.roster.find_staff(ACCOUNTANT).id


def send(cabinet: Cabinet, companies: list[str]) -> list[int]:
    return [cabinet.roster.send_invitation(company, ACCOUNTANT).id for company in companies]


async def _together(accepts: Accepts, tokens: list[str], me: int) -> list[Any]:
    return await asyncio.gather(*(accepts.accept(token, me, None, "link") for token in tokens), return_exceptions=True)


def accept_together(accepts: Accepts, tokens: list[str], me: int) -> list[Any]:
    """Each token's accept started at once on one event loop: each one's result, or what it raised."""
    return asyncio.run(_together(accepts, tokens, me))


class Commits:
    """Counts the COMMITs the engine runs (a batch is one)."""

    def __init__(self, cabinet: Cabinet) -> None:
        self.count = 0
        self._engine = cabinet.engine
        event.listen(self._engine, "commit", self._seen)

    def _seen(self, _connection: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "commit", self._seen)


def test_accepts_in_flight_together_are_one_commit(cabinet: Cabinet, env: Env) -> None:
    sent = send(cabinet, COMPANIES)
    tokens = [invitation_token(cabinet, n) for n in sent]
    commits = Commits(cabinet)
    try:
        results = accept_together(cabinet.accepts, tokens, user_id(cabinet))
    finally:
        commits.close()
    assert all(isinstance(r, AcceptResult) for r in results), results
    assert [r.client.company for r in results] == COMPANIES
    # On PostgreSQL each accept used to be its own transaction and commit; now the batch is one.
    assert commits.count == 1
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("accepted",)]
    assert env.sql("SELECT count(*) FROM clients") == [(len(COMPANIES),)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(len(COMPANIES),)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") \
        == [(2 * len(COMPANIES),)]


def test_two_accepts_of_one_invitation_in_one_batch_one_wins(cabinet: Cabinet, env: Env) -> None:
    """The second's guarded write finds the invitation accepted by the first: undone alone, decided again,
    and told what happened (409 on the web); the other accept of the batch is written."""
    first, other = send(cabinet, COMPANIES[:2])
    token = invitation_token(cabinet, first)
    won, lost, written = accept_together(cabinet.accepts, [token, token, invitation_token(cabinet, other)], user_id(cabinet))
    assert isinstance(won, AcceptResult) and won.invitation.state == "accepted"
    assert isinstance(lost, InvitationUnavailable) and lost.view.status == "accepted"
    assert isinstance(written, AcceptResult) and written.client.company == COMPANIES[1]
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("accepted",)]
    assert env.sql("SELECT count(*) FROM clients") == [(2,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(2,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(4,)]


def test_a_revoke_between_the_plan_and_the_batchs_write(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked, kept = send(cabinet, COMPANIES[:2])
    plan = cabinet.roster.plan_accept

    def read_then_revoke(token: str, *args: Any) -> Any:
        planned = plan(token, *args)
        assert planned is not None, "the read found the invitation acceptable"
        if planned.read.invitation_id == revoked:
            cabinet.roster.revoke_invitation(revoked)
        return planned

    monkeypatch.setattr(cabinet.roster, "plan_accept", read_then_revoke)
    refused, accepted = accept_together(cabinet.accepts, [invitation_token(cabinet, revoked), invitation_token(cabinet, kept)],
                                        user_id(cabinet))
    assert isinstance(refused, InvitationUnavailable) and refused.view.status == "revoked"
    assert isinstance(accepted, AcceptResult) and accepted.client.company == COMPANIES[1]
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [(revoked, "revoked"), (kept, "accepted")]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(1,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(2,)]


def test_a_failing_accept_fails_alone_and_the_batch_is_committed(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One accept's write breaks a constraint (its two notices share a Message-ID): it raises that error
    to its caller, nothing of it is kept, and the others of its batch are committed."""
    sent = send(cabinet, COMPANIES[:3])
    bad = sent[1]
    plan = cabinet.roster.plan_accept

    def broken(token: str, *args: Any) -> Any:
        planned = plan(token, *args)
        if planned is not None and planned.read.invitation_id == bad:
            planned.emails[1]["message_id"] = planned.emails[0]["message_id"]
        return planned

    monkeypatch.setattr(cabinet.roster, "plan_accept", broken)
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert isinstance(outcomes[1], IntegrityError), outcomes[1]
    assert isinstance(outcomes[0], AcceptResult) and isinstance(outcomes[2], AcceptResult)
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [
        (sent[0], "accepted"), (bad, "pending"), (sent[2], "accepted")]
    assert env.sql("SELECT count(*) FROM clients") == [(2,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(2,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(4,)]


class Savepoints:
    """The names of the savepoints the accepts' writes open (``daemon.db.savepoint``, still run as is)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import daemon.roster

        self.names: list[str] = []
        real = daemon.roster.savepoint

        def counted(connection: Any, name: str, release: bool = True, **pipeline: Any) -> Any:
            self.names.append(name)
            return real(connection, name, release, **pipeline)

        monkeypatch.setattr(daemon.roster, "savepoint", counted)


def test_a_batch_that_goes_through_is_one_savepoint_on_sqlite(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite copies each page a savepoint changes to its journal: a batch whose accepts all go through is
    written in one savepoint, not one each (PostgreSQL keeps one each: its errors come per accept, at
    each accept's sync). One that fails undoes the batch's savepoint, and the batch is written again
    with a savepoint each: the outcomes are those of ``test_a_failing_accept_fails_alone_…``."""
    savepoints = Savepoints(monkeypatch)
    sent = send(cabinet, COMPANIES)
    results = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert all(isinstance(r, AcceptResult) for r in results), results
    one_each = ["accept_plan"] * len(COMPANIES)
    assert savepoints.names == (["accept_batch"] if env.is_sqlite else one_each)
    assert env.sql("SELECT count(*) FROM clients") == [(len(COMPANIES),)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") \
        == [(2 * len(COMPANIES),)]


def test_a_batch_with_a_failing_accept_is_written_again_one_savepoint_each(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = send(cabinet, COMPANIES[:3])
    plan = cabinet.roster.plan_accept

    def broken(token: str, *args: Any) -> Any:
        planned = plan(token, *args)
        if planned is not None and planned.read.invitation_id == sent[2]:  # the last one written
            planned.emails[1]["message_id"] = planned.emails[0]["message_id"]
        return planned

    monkeypatch.setattr(cabinet.roster, "plan_accept", broken)
    savepoints = Savepoints(monkeypatch)
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert isinstance(outcomes[2], IntegrityError), outcomes[2]
    assert isinstance(outcomes[0], AcceptResult) and isinstance(outcomes[1], AcceptResult)
    one_each = ["accept_plan"] * 3
    assert savepoints.names == (["accept_batch", *one_each] if env.is_sqlite else one_each)
    # Nothing of the first pass is left twice: the two accepts written once each, the failed one not at all.
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [
        (sent[0], "accepted"), (sent[1], "accepted"), (sent[2], "pending")]
    assert env.sql("SELECT count(*) FROM clients") == [(2,)]
    if env.is_sqlite:  # the search index holds the two clients, and nothing of the undone first pass
        with closing(sqlite3.connect(env.database)) as db:
            db.execute("INSERT INTO clients_search (clients_search) VALUES ('integrity-check')")  # raises if not
        assert env.sql("SELECT rowid FROM clients_search WHERE clients_search MATCH '\"atelier\"'") \
            == env.sql("SELECT id FROM clients WHERE name LIKE 'Atelier%' ORDER BY id")
    assert env.sql("SELECT sum(clients) FROM firm_client_counts") == [(2,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(2,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(4,)]


class Meeting:
    """A checkpoint (``DomainContext.checkpoint``) that holds each instance's accept between its plan and
    its guarded write until both got there: both planned on "pending", both write."""

    def __init__(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties, timeout=MEETING_TIMEOUT)
        self._lock = threading.Lock()
        self._left = parties

    def __call__(self, table: str, row_id: int, wanted: str) -> None:
        with self._lock:
            if self._left == 0:
                return  # the loser's second decision: nobody to meet
            self._left -= 1
        self._barrier.wait()


def test_two_instances_accepting_one_invitation_at_once_one_wins(cabinet: Cabinet, env: Env, clock: FakeClock) -> None:
    """Two instances on one PostgreSQL (each its own engine, pool, event loop and batch), held until both
    planned the accept: both write, the row lock orders them, the second's guarded write matches nothing,
    and, decided again, it is told the invitation was accepted."""
    if env.is_sqlite:
        pytest.skip("a second instance refuses to start on SQLite (test_operations)")
    (sent,) = send(cabinet, COMPANIES[:1])
    token, me = invitation_token(cabinet, sent), user_id(cabinet)
    meeting = Meeting(2)
    second = build(load_config(env.config_path), clock=clock)
    outcomes: list[Any] = [None, None]
    try:
        def instance(n: int, built: Cabinet) -> None:
            roster = Roster(replace(built.roster.context, checkpoint=meeting))
            outcomes[n] = accept_together(Accepts(roster, plan_on_loop=False), [token], me)[0]

        threads = [threading.Thread(target=instance, args=(n, built)) for n, built in enumerate((cabinet, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(MEETING_TIMEOUT)
            assert not thread.is_alive(), "an instance never finished"
    finally:
        second.close()
    won = [o for o in outcomes if isinstance(o, AcceptResult)]
    lost = [o for o in outcomes if not isinstance(o, AcceptResult)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert isinstance(lost[0], InvitationUnavailable) and lost[0].view.status == "accepted"
    assert env.sql("SELECT count(*) FROM clients") == [(1,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(1,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(2,)]


def test_background_work_gives_way_to_accepts_coming_in_but_never_for_long(cabinet: Cabinet) -> None:
    """``wait_for_lull`` (the outbox worker's ``give_way``): at once when no accept came in; held back
    while one just did; but never longer than ``max_wait``, so the worker's backlog still drains."""
    me = user_id(cabinet)
    [first, second] = send(cabinet, COMPANIES[:2])
    plan_on_loop = cabinet.engine.dialect.name == "sqlite"

    async def scenario() -> None:
        # No accept yet: nothing to give way to, even with a lull of an hour.
        quiet = Accepts(cabinet.roster, plan_on_loop, lull=3600, max_wait=3600)
        await asyncio.wait_for(quiet.wait_for_lull(), MEETING_TIMEOUT)
        # An accept just came in: held back (an hour's lull, an hour at most) while the loop runs on.
        held = Accepts(cabinet.roster, plan_on_loop, lull=3600, max_wait=3600)
        await held.accept(invitation_token(cabinet, first), me, None, "link")
        waiting = asyncio.create_task(held.wait_for_lull())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        waiting.cancel()
        # Accepts that never pause (an hour's lull) hold it back no longer than max_wait.
        bounded = Accepts(cabinet.roster, plan_on_loop, lull=3600, max_wait=0.01)
        await bounded.accept(invitation_token(cabinet, second), me, None, "link")
        await asyncio.wait_for(bounded.wait_for_lull(), MEETING_TIMEOUT)
        for accepts in (quiet, held, bounded):
            accepts.close()

    asyncio.run(scenario())


def test_sqlites_batches_run_on_one_thread_of_their_own_which_close_ends(cabinet: Cabinet, env: Env) -> None:
    """Batch after batch on one long-lived thread (not a hop through ``asyncio.to_thread`` each), each still
    answered once committed; ``Cabinet.close`` ends the thread."""
    if not env.is_sqlite:
        pytest.skip("PostgreSQL's batches read their plans in threads of the pool (POSTGRESQL_WRITERS at once)")
    sent = send(cabinet, COMPANIES[:4])
    tokens = [invitation_token(cabinet, n) for n in sent]
    committed_on: list[threading.Thread] = []

    def seen(_connection: Any) -> None:
        committed_on.append(threading.current_thread())

    async def two_batches() -> list[Any]:
        first = await _together(cabinet.accepts, tokens[:2], user_id(cabinet))
        return first + await _together(cabinet.accepts, tokens[2:], user_id(cabinet))

    event.listen(cabinet.engine, "commit", seen)
    try:
        results = asyncio.run(two_batches())
    finally:
        event.remove(cabinet.engine, "commit", seen)
    assert all(isinstance(r, AcceptResult) for r in results), results
    assert len(committed_on) == 2 and committed_on[0] is committed_on[1], committed_on
    (thread,) = set(committed_on)
    assert thread.name.startswith("cabinet-accepts") and thread.is_alive()
    cabinet.close()
    assert not thread.is_alive()


def test_a_batch_that_fails_fails_its_own_accepts_and_the_next_batch_is_written(cabinet: Cabinet, env: Env) -> None:
    """A batch whose write fails as a whole (its BEGIN refused: another process holds SQLite's write lock)
    fails each of its accepts with that error, nobody else's; the batches' thread goes on with the next."""
    if not env.is_sqlite:
        pytest.skip("SQLite's batches' thread and its write lock")
    sent = send(cabinet, COMPANIES[:4])
    tokens = [invitation_token(cabinet, n) for n in sent]

    @event.listens_for(cabinet.engine, "connect")
    def no_waiting(dbapi_connection: Any, _record: Any) -> None:  # after the engine's own pragmas
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    cabinet.engine.dispose()  # the writer's connection, and the pool's, waited 10 s for the lock
    other = sqlite3.connect(env.database, isolation_level=None)

    async def batches() -> tuple[list[Any], list[Any]]:
        other.execute("BEGIN IMMEDIATE")
        try:
            refused = await _together(cabinet.accepts, tokens[:2], user_id(cabinet))
        finally:
            other.execute("ROLLBACK")
        return refused, await _together(cabinet.accepts, tokens[2:], user_id(cabinet))

    try:
        refused, written = asyncio.run(batches())
    finally:
        other.close()
    assert [type(r).__name__ for r in refused] == ["OperationalError"] * 2, refused
    assert all("database is locked" in str(r) for r in refused), refused
    assert all(isinstance(r, AcceptResult) for r in written), written
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [
        (sent[0], "pending"), (sent[1], "pending"), (sent[2], "accepted"), (sent[3], "accepted")]


def test_an_accept_in_flight_holds_background_work_back_until_it_is_answered() -> None:
    """A client on a kept-alive connection sends its next request only once answered: while an accept is
    being served nothing arrives, yet it is no lull. ``lull=0``: only what is in flight holds back."""
    arrivals = Arrivals(lull=0, max_wait=0)
    assert not arrivals.busy() and arrivals.wait_for_lull()
    arrivals.serving()
    arrivals.serving()
    # In flight, however long ago it arrived: busy; a wait ends only at max_wait, saying so (False).
    assert arrivals.busy()
    assert arrivals.wait_for_lull() is False
    assert asyncio.run(arrivals.lull()) is False
    arrivals.answered()
    assert arrivals.busy()  # the other one is still in flight
    arrivals.answered()
    assert not arrivals.busy() and arrivals.wait_for_lull() is True and asyncio.run(arrivals.lull()) is True


def test_the_outbox_worker_starts_no_more_emails_once_an_accept_comes_in(cabinet: Cabinet, env: Env) -> None:
    """The worker gives way within one email: an accept that comes in while a batch of emails is being
    rendered stops the batch's rendering at once, and its Maildir delivery after the first email; the rest
    wait (here until ``max_wait``: the lull of an hour never comes) and are then sent, each once, in order."""
    me = user_id(cabinet)
    invitations = send(cabinet, COMPANIES)  # an invitation email each, queued
    token = invitation_token(cabinet, invitations[0])
    accepts = Accepts(cabinet.roster, cabinet.engine.dialect.name == "sqlite", lull=3600, max_wait=0.05)
    worker = cabinet.worker
    worker._give_way = accepts  # the accepts this test sends come through these
    events: list[tuple[Any, ...]] = []
    started: list[asyncio.Task[AcceptResult]] = []
    compose, send_batch = worker._compose, worker._transport.send_batch  # type: ignore[attr-defined]

    def rendering(row: Any) -> bytes:
        events.append(("render", row.id))
        if len(events) == 3 and not started:  # an accept comes in while the second batch is being rendered
            events.append(("accept",))
            started.append(asyncio.get_running_loop().create_task(accepts.accept(token, me, None, "link")))
        return compose(row)

    async def delivering(emails: Any, cut_short: Any = None) -> Any:
        answers = await send_batch(emails, cut_short)
        events.append(("delivered", len(emails), len(answers)))
        return answers

    worker._compose = rendering
    worker._transport.send_batch = delivering  # type: ignore[attr-defined]

    async def scenario() -> int:
        sent = await worker.send_due()
        assert isinstance(await started[0], AcceptResult)
        # The accept's two emails go in this pass when it was answered before the worker's last claim; on a
        # busy machine (PostgreSQL's accept runs in a thread) it can be answered after it: then the next pass.
        return sent + await worker.send_due()

    # The accept's two emails too, once it is answered.
    assert asyncio.run(scenario()) == len(COMPANIES) + 2
    # Claims grow 1, 2, 4…: the first batch is one email, the second two. Once the accept came in, the
    # second batch's next email was not rendered, and its delivery was one email, not the two.
    first, second = events[0][1], events[2][1]
    assert events[:5] == [("render", first), ("delivered", 1, 1), ("render", second), ("accept",), ("delivered", 1, 1)]
    rows = env.sql("SELECT id, state, attempts, last_answer FROM outbox ORDER BY id")
    assert [(r.state, r.attempts) for r in rows] == [("sent", 1)] * (len(COMPANIES) + 2)
    # Delivered in the outbox's order (the one given back went first), each once.
    keys = [r.last_answer.removeprefix("maildir ") for r in rows]
    assert sorted(keys, key=_delivery_order) == keys
    assert sorted(item.id for item in list_mail(env.maildir)) == sorted(keys)
    assert sorted(event[1] for event in events if event[0] == "render") == [r.id for r in rows]


def _database_rows(database: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (FTS5's own shadow tables aside: how it splits its index into segments is what a
    batch changes), and what the search index finds for each client's name."""
    with closing(sqlite3.connect(database)) as db:
        db.execute("INSERT INTO clients_search (clients_search) VALUES ('integrity-check')")  # raises if broken
        tables = [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'clients_search%'")]
        rows = {table: sorted(db.execute(f'SELECT * FROM "{table}"'), key=repr) for table in tables}
        rows["search"] = [
            (name, [rowid for (rowid,) in db.execute(
                "SELECT rowid FROM clients_search WHERE clients_search MATCH ? ORDER BY rowid", (f'"{name}"',))])
            for (name,) in db.execute("SELECT search_key FROM clients ORDER BY id")
        ]
        return rows


def test_a_batch_written_together_leaves_the_rows_written_one_accept_at_a_time(
    cabinet: Cabinet, env: Env, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite writes a batch phase by phase (every guarded UPDATE, then the new clients in one INSERT, the
    events in one, the emails in one executemany): the database it leaves is the one the accept-by-accept
    path leaves, row for row, ids, values and search index included. One company is already on the roster
    under its name (its entry is reconnected, not inserted)."""
    if not env.is_sqlite:
        pytest.skip("the phase-by-phase write is SQLite's (PostgreSQL writes each accept in its savepoint)")
    firm = cabinet.roster.find_firm(FIRM)
    cabinet.onboarding.add_client(firm.id, NewClient(kind="individual", name=COMPANIES[2], billing="none"),
                                  None, "operator", "cli")
    sent = send(cabinet, COMPANIES)
    clock.freeze()  # both writes see the same moment
    me = user_id(cabinet)
    plans = [cabinet.roster.plan_accept(invitation_token(cabinet, n), me, None) for n in sent]
    assert all(plan is not None for plan in plans)
    assert sum(plan.client is not None for plan in plans) == 1  # type: ignore[union-attr]
    batch = [(plan, "link") for plan in reversed(plans)]  # written in invitation order whatever the arrival
    before = env.root / "before.sqlite3"
    with closing(sqlite3.connect(env.database)) as live, closing(sqlite3.connect(before)) as copy:
        live.backup(copy)

    together = cabinet.roster.accept_planned_many(batch)
    assert all(isinstance(outcome, AcceptResult) for outcome in together), together
    written_together = _database_rows(env.database)

    with closing(sqlite3.connect(before)) as copy, closing(sqlite3.connect(env.database)) as live:
        copy.backup(live)  # the database as it was before the batch
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(0,)]
    monkeypatch.setattr(Roster, "_all_written", lambda *args: False)  # accept by accept, each in its savepoint
    one_by_one = cabinet.roster.accept_planned_many(batch)

    assert one_by_one == together
    assert _database_rows(env.database) == written_together
    assert len(written_together["clients"]) == len(COMPANIES)
    assert len(written_together["outbox"]) >= 2 * len(COMPANIES)
