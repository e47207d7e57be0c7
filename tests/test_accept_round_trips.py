"""PostgreSQL's batch of accepts (``Roster.accept_planned_many``) in psycopg's pipeline mode: how many
round trips it costs, counted from libpq's own protocol trace (``bench.pg_round_trips``), and what each
accept is told when something fails now that statements wait for their answers together: a COMMIT sent
with the last accept's statements, a guarded UPDATE read with the roster entry's statement.

A batch of N accepts costs N plan reads, one round trip per accept for its guarded UPDATE and its
roster entry's INSERT together, a sync at the end of each accept but the last, and one for the last
accept's event, emails and the COMMIT: 3N. BEGIN waits for nothing."""

from __future__ import annotations

import select
from dataclasses import replace
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from bench.pg_round_trips import RoundTrips
from daemon.app import Cabinet
from daemon.accepts import Accepts
from daemon.roster import AcceptResult, InvitationUnavailable, Roster
from tests.conftest import WAIT_TIMEOUT, Cli, Env, invitation_token
from tests import test_accepts
from tests.test_accepts import COMPANIES, FIRM, accept_together, send, user_id

cabinet = test_accepts.cabinet  # the same instance as test_accepts' tests

pytestmark = pytest.mark.usefixtures("postgresql_only")


@pytest.fixture
def postgresql_only(env: Env) -> None:
    if env.is_sqlite:
        pytest.skip("PostgreSQL's pipeline mode; SQLite has no round trips")


@pytest.fixture
def traced(cabinet: Cabinet) -> Iterator[RoundTrips]:
    """Every connection of the instance's engine traced: the engine's pool (and with it the kept read
    connections) emptied, so that each is opened again under the trace."""
    counter = RoundTrips(cabinet.engine)
    cabinet.engine.dispose()
    yield counter
    counter.close()


def test_a_batch_of_accepts_costs_three_round_trips_per_accept(
    cabinet: Cabinet, env: Env, traced: RoundTrips
) -> None:
    sent = send(cabinet, COMPANIES[:3])
    tokens, me = [invitation_token(cabinet, n) for n in sent], user_id(cabinet)
    traced.start()
    results = accept_together(cabinet.accepts, tokens, me)
    counts = traced.stop()
    assert all(isinstance(r, AcceptResult) for r in results), results
    assert counts.by_statement["COMMIT"] == 1 and counts.by_statement["BEGIN"] == 1  # one transaction
    assert counts.by_statement["SELECT invitations.id AS"] == 3  # the plans' reads
    # Before: BEGIN waited for its own sync, the UPDATE and the INSERT each for its row, the pipeline's
    # end for a sync, the COMMIT for its answer: 3 + 1 + 3 × 3 + 1 + 1 = 15.
    assert counts.round_trips == 3 * 3, counts
    assert env.sql("SELECT count(*) FROM clients") == [(3,)]


def test_a_failing_commit_fails_every_accept_of_the_batch(cabinet: Cabinet, env: Env) -> None:
    """A deferred constraint fails at COMMIT, after every accept's statements went through: the COMMIT is
    sent with the last accept's statements, and its error still reaches every accept of the batch (the
    web answers none of them 303), and nothing of the batch is kept."""
    sent = send(cabinet, COMPANIES[:3])
    # Checked at COMMIT only: an accepted event for the second company fails the whole transaction then.
    env.write("CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
         f"IF NEW.company_id = {_company_of(env, sent[1])} AND NEW.kind = 'invitation.accepted' THEN "
         "RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$",
         "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED "
         "FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()")
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert all(isinstance(o, DBAPIError) and "refused at commit" in str(o) for o in outcomes), outcomes
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("pending",)]
    assert env.sql("SELECT count(*) FROM clients") == [(0,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(0,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(0,)]


def _company_of(env: Env, invitation_id: int) -> int:
    return int(env.sql("SELECT company_id FROM invitations WHERE id = :id", id=invitation_id)[0][0])


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_a_lost_race_in_a_batch_undoes_that_accept_alone_with_the_entry_sent_beside_it(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch, lost: int
) -> None:
    """Revoked between its plan and the batch's write, one accept's guarded UPDATE matches nothing; the
    roster entry's INSERT, sent with it in the same round trip, did insert: both are undone (its
    savepoint), the accept is decided again (revoked), and the rest of the batch is committed. First,
    middle and last of the batch."""
    sent = send(cabinet, COMPANIES[:3])
    plan = cabinet.roster.plan_accept

    def read_then_revoke(token: str, *args: Any) -> Any:
        planned = plan(token, *args)
        assert planned is not None
        if planned.read.invitation_id == sent[lost]:
            cabinet.roster.revoke_invitation(sent[lost])
        return planned

    monkeypatch.setattr(cabinet.roster, "plan_accept", read_then_revoke)
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert isinstance(outcomes[lost], InvitationUnavailable) and outcomes[lost].view.status == "revoked"
    assert all(isinstance(o, AcceptResult) for n, o in enumerate(outcomes) if n != lost), outcomes
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [
        (n, "revoked" if n == sent[lost] else "accepted") for n in sent]
    assert env.sql("SELECT company_id FROM clients ORDER BY company_id") == [
        (_company_of(env, n),) for n in sent if n != sent[lost]]
    assert env.sql("SELECT sum(clients) FROM firm_client_counts") == [(2,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(2,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(4,)]


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_an_error_read_with_the_entrys_row_fails_that_accept_alone(
    cabinet: Cabinet, env: Env, failing: int
) -> None:
    """The roster entry's INSERT fails (a trigger refuses it): the error comes with its row, read before
    any sync, which leaves psycopg's pipeline aborted; the pipeline is synced before the ROLLBACK TO
    (which the server would otherwise skip), that accept fails alone, and the rest is committed."""
    sent = send(cabinet, COMPANIES[:3])
    env.write("CREATE FUNCTION refuse_client() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
         f"IF NEW.company_id = {_company_of(env, sent[failing])} THEN RAISE EXCEPTION 'client refused'; END IF; "
         "RETURN NEW; END $$",
         "CREATE TRIGGER refuse_client BEFORE INSERT ON clients FOR EACH ROW EXECUTE FUNCTION refuse_client()")
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert isinstance(outcomes[failing], DBAPIError) and "client refused" in str(outcomes[failing]), outcomes
    assert all(isinstance(o, AcceptResult) for n, o in enumerate(outcomes) if n != failing), outcomes
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [
        (n, "pending" if n == sent[failing] else "accepted") for n in sent]
    assert env.sql("SELECT count(*) FROM clients") == [(2,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(2,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(4,)]


def test_a_connection_lost_mid_batch_fails_every_accept(cabinet: Cabinet, env: Env) -> None:
    """The batch's backend is terminated (``pg_terminate_backend``) as its second accept's guarded write
    is about to be sent: the first accept's statements went through, but nothing is committed, and
    every accept of the batch is told of the error (none 303)."""
    sent = send(cabinet, COMPANIES[:3])
    tokens, me = [invitation_token(cabinet, n) for n in sent], user_id(cabinet)
    seen: list[int] = []

    def terminate_at_the_second(table: str, row_id: int, wanted: str) -> None:
        seen.append(row_id)
        if len(seen) == 2:
            env.write("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    roster = Roster(replace(cabinet.roster.context, checkpoint=terminate_at_the_second))
    outcomes = accept_together(Accepts(roster, plan_on_loop=False), tokens, me)
    assert all(isinstance(o, DBAPIError) for o in outcomes), outcomes
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("pending",)]
    assert env.sql("SELECT count(*) FROM clients") == [(0,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(0,)]


@pytest.mark.parametrize("changed", [False, True])
def test_a_roster_entry_found_by_its_name_is_connected_in_the_batch(
    cabinet: Cabinet, env: Env, cli: Cli, monkeypatch: pytest.MonkeyPatch, changed: bool
) -> None:
    """The firm added the company by name before (no company yet): the batch's accept connects that entry
    (its guarded UPDATE sent with the invitation's). ``changed``: the entry was renamed between the plan
    and the write, so its guarded UPDATE matches nothing though the invitation's did: that accept is
    undone alone and decided again (a new entry, as a serial order gives), the others are written."""
    cli("client", "add", "--firm", FIRM, "--kind", "business", "--name", COMPANIES[1], "--billing", "none")
    (entry,) = env.sql("SELECT id FROM clients")[0]
    sent = send(cabinet, COMPANIES[:3])
    if changed:
        plan = cabinet.roster.plan_accept

        def read_then_rename(token: str, *args: Any) -> Any:
            planned = plan(token, *args)
            assert planned is not None
            if planned.read.invitation_id == sent[1]:
                assert planned.client is not None and planned.client.id == entry
                env.write(f"UPDATE clients SET name = 'Renamed', name_key = 'renamed' WHERE id = {int(entry)}")
            return planned

        monkeypatch.setattr(cabinet.roster, "plan_accept", read_then_rename)
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert all(isinstance(o, AcceptResult) for o in outcomes), outcomes
    assert (outcomes[1].client.id == entry) is not changed
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("accepted",)]
    assert env.sql("SELECT count(*) FROM clients") == [(4 if changed else 3,)]
    assert env.sql("SELECT count(*) FROM clients WHERE company_id IS NULL") == [(1 if changed else 0,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(3,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(6,)]


# A batch of one accept: no SAVEPOINT (its transaction holds nothing else); what a savepoint undid for it,
# the transaction's rollback undoes, and it is told the same.

def test_a_batch_of_one_accept_costs_three_round_trips_and_no_savepoint(
    cabinet: Cabinet, env: Env, traced: RoundTrips
) -> None:
    (sent,) = send(cabinet, COMPANIES[:1])
    token, me = invitation_token(cabinet, sent), user_id(cabinet)
    traced.start()
    (result,) = accept_together(cabinet.accepts, [token], me)
    counts = traced.stop()
    assert isinstance(result, AcceptResult), result
    assert counts.by_statement["SAVEPOINT accept_plan"] == 0, counts
    assert counts.by_statement["BEGIN"] == 1 and counts.by_statement["COMMIT"] == 1
    assert counts.round_trips == 3, counts
    assert env.sql("SELECT count(*) FROM clients") == [(1,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(2,)]


def _nothing_accepted(env: Env) -> None:
    assert env.sql("SELECT DISTINCT state FROM invitations") != [("accepted",)]
    assert env.sql("SELECT count(*) FROM clients") == [(0,)]
    assert env.sql("SELECT sum(clients) FROM firm_client_counts") in ([(None,)], [(0,)])
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(0,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(0,)]


def test_a_lost_race_in_a_batch_of_one_undoes_the_entry_sent_beside_it(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked between its plan and its write: the guarded UPDATE matches nothing, the roster entry's
    INSERT sent with it did insert; the transaction is rolled back and the accept decided again."""
    (sent,) = send(cabinet, COMPANIES[:1])
    plan = cabinet.roster.plan_accept

    def read_then_revoke(token: str, *args: Any) -> Any:
        planned = plan(token, *args)
        cabinet.roster.revoke_invitation(sent)
        return planned

    monkeypatch.setattr(cabinet.roster, "plan_accept", read_then_revoke)
    (outcome,) = accept_together(cabinet.accepts, [invitation_token(cabinet, sent)], user_id(cabinet))
    assert isinstance(outcome, InvitationUnavailable) and outcome.view.status == "revoked", outcome
    assert env.sql("SELECT state FROM invitations") == [("revoked",)]
    _nothing_accepted(env)


@pytest.mark.parametrize("table", ["clients", "events"])
def test_an_error_in_a_batch_of_one_fails_it_and_keeps_nothing(
    cabinet: Cabinet, env: Env, caplog: pytest.LogCaptureFixture, table: str
) -> None:
    """A trigger refuses the roster entry (its error read with the entry's row, which leaves psycopg's
    pipeline aborted) or the event (its error read at the pipeline's end, where the server skips the
    COMMIT sent after it): the accept fails with that error, nothing of it is kept, and psycopg's pipeline
    ends without an error of its own (nothing logged)."""
    (sent,) = send(cabinet, COMPANIES[:1])
    env.write("CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
              "RAISE EXCEPTION 'row refused'; END $$",
              f"CREATE TRIGGER refuse_row BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_row()")
    (outcome,) = accept_together(cabinet.accepts, [invitation_token(cabinet, sent)], user_id(cabinet))
    assert isinstance(outcome, DBAPIError) and "row refused" in str(outcome), outcome
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    _nothing_accepted(env)
    assert not [r for r in caplog.records if r.name.startswith("psycopg")], caplog.records
    # The connection is fit for the next batch: the same accept, once the trigger is gone.
    env.write(f"DROP TRIGGER refuse_row ON {table}")
    (again,) = accept_together(cabinet.accepts, [invitation_token(cabinet, sent)], user_id(cabinet))
    assert isinstance(again, AcceptResult), again


@pytest.mark.parametrize("batch", [1, 3])
def test_an_error_read_as_the_commit_is_sent_fails_the_accept_quietly(
    cabinet: Cabinet, env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The event's error comes back after the accept's emails are sent and before what follows them (the
    COMMIT, or a sync in a batch), as happens on a busy machine, so psycopg reads it while sending the
    COMMIT and raises it there. Here the trigger first waits for its company's advisory lock, which the
    test holds until the emails are sent, then the test waits for the error to reach the socket. Each
    accept fails with the trigger's error, nothing of them is kept, and psycopg's pipeline ends without
    an error of its own: it logged "error ignored terminating …: pipeline aborted" before (the flaky
    failure of the test above)."""
    sent = send(cabinet, COMPANIES[:batch])
    companies = [row[0] for row in env.sql("SELECT company_id FROM invitations")]
    env.write("CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
              "PERFORM pg_advisory_xact_lock(NEW.company_id); RAISE EXCEPTION 'row refused'; END $$",
              "CREATE TRIGGER refuse_row BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_row()")
    holder_engine = create_engine(env.database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    holder = holder_engine.connect()
    notifier = cabinet.roster._notifier
    queue = notifier.queue_prepared
    waited: list[bool] = []

    def queue_then_wait_for_the_error(connection: Any, prepared: list[dict[str, Any]]) -> None:
        queue(connection, prepared)  # sent while the event's INSERT waits for the lock: nothing to read yet
        (company,) = {email["company_id"] for email in prepared}
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": company})
        driver = connection.connection.driver_connection
        readable, _, _ = select.select([driver.fileno()], [], [], WAIT_TIMEOUT)
        waited.append(bool(readable))

    try:
        for company in companies:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": company})
        monkeypatch.setattr(notifier, "queue_prepared", queue_then_wait_for_the_error)
        outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    finally:
        holder.close()
        holder_engine.dispose()
    assert waited == [True] * batch  # each accept's error was there to be read before what followed was sent
    assert all(isinstance(o, DBAPIError) and "row refused" in str(o) for o in outcomes), outcomes
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("pending",)]
    _nothing_accepted(env)
    assert not [r for r in caplog.records if r.name.startswith("psycopg")], caplog.records
    # The connection is fit for the next batch: the same accepts, once the trigger is gone.
    env.write("DROP TRIGGER refuse_row ON events")
    monkeypatch.undo()
    again = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert all(isinstance(o, AcceptResult) for o in again), again


def test_a_failing_commit_fails_a_batch_of_one(cabinet: Cabinet, env: Env) -> None:
    (sent,) = send(cabinet, COMPANIES[:1])
    env.write("CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
              "RAISE EXCEPTION 'refused at commit'; END $$",
              "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED "
              "FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()")
    (outcome,) = accept_together(cabinet.accepts, [invitation_token(cabinet, sent)], user_id(cabinet))
    assert isinstance(outcome, DBAPIError) and "refused at commit" in str(outcome), outcome
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    _nothing_accepted(env)


def test_a_connection_lost_in_a_batch_of_one_fails_it(cabinet: Cabinet, env: Env) -> None:
    """The backend is terminated as the accept's guarded write is about to be sent: it is told of the
    error (no 303), nothing is kept."""
    (sent,) = send(cabinet, COMPANIES[:1])

    def terminate(table: str, row_id: int, wanted: str) -> None:
        env.write("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    roster = Roster(replace(cabinet.roster.context, checkpoint=terminate))
    (outcome,) = accept_together(Accepts(roster, plan_on_loop=False), [invitation_token(cabinet, sent)],
                                 user_id(cabinet))
    assert isinstance(outcome, DBAPIError), outcome
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    _nothing_accepted(env)
