"""PostgreSQL's batch of accepts (``Roster.accept_planned_many``) in psycopg's pipeline mode: how many
round trips it costs, counted from libpq's own protocol trace (``bench.pg_round_trips``), and what its
COMMIT's failure does now that the COMMIT is sent with the last accept's statements.

A batch of N accepts costs N plan reads, one round trip per accept for its guarded UPDATE and its
roster entry's INSERT together, a sync at the end of each accept but the last, and one for the last
accept's event, emails and the COMMIT: 3N. BEGIN waits for nothing."""

from __future__ import annotations

from typing import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from bench.pg_round_trips import RoundTrips
from daemon.app import Cabinet
from daemon.roster import AcceptResult
from tests.conftest import Env, invitation_token
from tests import test_accepts
from tests.test_accepts import COMPANIES, accept_together, send, user_id

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
    (company,) = env.sql("SELECT company_id FROM invitations WHERE id = :id", id=sent[1])[0]
    ddl = create_engine(env.database_url, poolclass=NullPool)
    try:
        with ddl.begin() as connection:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.company_id = {int(company)} AND NEW.kind = 'invitation.accepted' THEN "
                "RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$")
            connection.exec_driver_sql(
                "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()")
    finally:
        ddl.dispose()
    outcomes = accept_together(cabinet.accepts, [invitation_token(cabinet, n) for n in sent], user_id(cabinet))
    assert all(isinstance(o, DBAPIError) and "refused at commit" in str(o) for o in outcomes), outcomes
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("pending",)]
    assert env.sql("SELECT count(*) FROM clients") == [(0,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(0,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(0,)]
