"""First openings written together (``LinkOpens.note`` / ``record_openings``): each still recorded once
however many arrive at once (on PostgreSQL also from two instances whose transactions both passed the
"opened already?" check: migration 0019's index), one that cannot be written fails alone, and a page
whose opening could not be noted is still shown (the failure logged)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.link_opens import Opening, invitation_detail
from tests.conftest import WAIT_TIMEOUT, Cli, Env, RunningServer, Seed, invitation_token, sent_invitation, wait_until




def _opened(env: Env) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in env.sql(
        "SELECT actor, detail FROM events WHERE kind = 'link.opened' AND channel = 'link' ORDER BY id")]


def _ddl(env: Env, *statements: str) -> None:
    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def test_a_batch_records_each_first_opening_once_and_a_bad_one_fails_alone(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    first = sent_invitation(cli, seed, env)
    company_id, firm_id = env.sql("SELECT company_id, firm_id FROM invitations WHERE id = :id", id=first)[0]
    opening = Opening(seed.accountant, firm_id, company_id, invitation_detail(first))
    other = Opening("someone@else.example", firm_id, company_id, {"purpose": "manage", "ref": company_id})
    # A company deleted since the page's read: the row's foreign key refuses it.
    gone = Opening("gone@else.example", None, 10**9, invitation_detail(10**9))
    outcomes = cabinet.link_opens.record_openings([opening, opening, gone, other, opening])
    assert [outcome is None for outcome in outcomes] == [True, True, False, True, True]
    assert isinstance(outcomes[2], IntegrityError)
    # The same link twice in one batch, and again in the next: one row.
    assert [actor for actor, _ in _opened(env)] == [seed.accountant, "someone@else.example"]
    assert cabinet.link_opens.record_openings([opening, other]) == [None, None]
    assert len(_opened(env)) == 2
    with pytest.raises(IntegrityError):  # one opening alone: its own error
        cabinet.link_opens.record_openings([gone])


def test_first_openings_at_once_leave_one_row_per_link(
    server: RunningServer, cli: Cli, seed: Seed, env: Env
) -> None:
    links = []
    for _ in range(2):  # the second invitation replaces the first, whose link still shows a page
        invitation_id = sent_invitation(cli, seed, env)
        links.append(f"/invitations/{invitation_token(server.cabinet, invitation_id)}")
    with httpx.Client(base_url=env.base_url, timeout=60) as client, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda path: client.get(path).status_code, links * 16))
    assert statuses == [200] * 32
    recorded = _opened(env)
    # The check is made again under the write (SQLite's single writer), and on PostgreSQL the index of
    # migration 0019 refuses a second row: one row each.
    assert len(recorded) == 2
    assert {detail for _, detail in recorded} == {
        f'{{"invitation_id": {n}, "purpose": "invitation", "ref": {n}}}'
        for n in (row[0] for row in env.sql("SELECT id FROM invitations"))
    }


def test_a_page_whose_opening_cannot_be_noted_is_still_shown(
    server: RunningServer, cli: Cli, seed: Seed, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    invitation_id = sent_invitation(cli, seed, env)
    link = f"/invitations/{invitation_token(server.cabinet, invitation_id)}"
    if env.is_sqlite:
        _ddl(env, "CREATE TRIGGER refuse_openings BEFORE INSERT ON events WHEN NEW.kind = 'link.opened' "
                  "BEGIN SELECT RAISE(ABORT, 'openings refused'); END")
    else:
        _ddl(env, "CREATE FUNCTION refuse_openings() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.kind = 'link.opened' THEN RAISE EXCEPTION 'openings refused'; END IF; RETURN NEW; END $$",
             "CREATE TRIGGER refuse_openings BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_openings()")
    with caplog.at_level(logging.WARNING), httpx.Client(base_url=env.base_url, timeout=60) as client:
        page = client.get(link)
        assert page.status_code == 200 and seed.company in page.text
        assert any("could not record a link opening" in record.getMessage() for record in caplog.records)
        assert _opened(env) == []
        _ddl(env, "DROP TRIGGER refuse_openings" + ("" if env.is_sqlite else " ON events"))
        assert client.get(link).status_code == 200
        assert [actor for actor, _ in _opened(env)] == [seed.accountant]  # written before the page was answered


# -- PostgreSQL: two instances' transactions, both past the check before either commits -----------------


@contextmanager
def company_held(env: Env, company_id: int) -> Iterator[Connection]:
    """The company's row locked FOR UPDATE by a transaction of its own (until the block ends, or the
    holder rolls back sooner): an event's insert checks its foreign key at the end of its statement, so
    each insert of an opening of this company writes its row, then waits there, uncommitted."""
    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.connect() as holder:
            holder.begin()
            holder.execute(text("SELECT id FROM companies WHERE id = :id FOR UPDATE"), {"id": company_id})
            yield holder
            holder.rollback()
    finally:
        engine.dispose()


def waiting_for_locks(holder: Connection) -> int:
    """How many other clients of the test's database wait for a lock now (not autovacuum, say)."""
    return int(holder.execute(text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")).scalar_one())


def at_once(env: Env, company_id: int, batches: Sequence[tuple[Cabinet, list[Opening]]]) -> list[list[Any]]:
    """Each instance's batch recorded at once, each in a thread of its own, released together once all
    of them wait: each batch's first row is then written (or waits for another's uncommitted copy) with
    its "opened already?" check made while no other had committed. Their outcomes, in order."""
    with company_held(env, company_id) as holder, ThreadPoolExecutor(len(batches)) as pool:
        calls = [pool.submit(instance.link_opens.record_openings, openings) for instance, openings in batches]
        wait_until(lambda: waiting_for_locks(holder) == len(batches),
                   what="every batch's transaction waiting, past its first opening's check",
                   detail=lambda: f"{waiting_for_locks(holder)} waiting")
        holder.rollback()  # releases the company: they go on
        return [call.result(timeout=WAIT_TIMEOUT) for call in calls]


@pytest.fixture
def another_instance(env: Env) -> Iterator[Cabinet]:
    """A second Cabinet on the same database, as a second instance of the firm's would be."""
    built = build(load_config(env.config_path))
    yield built
    built.close()


def test_two_instances_recording_a_first_opening_at_the_same_instant_keep_one_row(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet, another_instance: Cabinet
) -> None:
    if env.is_sqlite:
        pytest.skip("PostgreSQL's concurrent writers (SQLite's single writer: the tests above)")
    invitation_id = sent_invitation(cli, seed, env)
    company_id, firm_id = env.sql("SELECT company_id, firm_id FROM invitations WHERE id = :id", id=invitation_id)[0]
    opening = Opening(seed.accountant, firm_id, company_id, invitation_detail(invitation_id))
    outcomes = at_once(env, company_id, [(cabinet, [opening]), (another_instance, [opening])])
    assert outcomes == [[None], [None]]  # both recorded it: the later found it written
    assert _opened(env) == [(seed.accountant, f'{{"invitation_id": {invitation_id}, "purpose": "invitation", '
                                              f'"ref": {invitation_id}}}')]


def test_two_instances_batches_of_the_same_links_in_opposite_orders_neither_waits_for_the_other_in_turn(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet, another_instance: Cabinet
) -> None:
    """Links X and Y in one instance's batch, Y and X in another's: written in one order (the index's),
    neither batch ends up waiting for a row the other waits behind (a deadlock PostgreSQL would break by
    failing one batch, whose rows would then be written one by one). Each batch is one statement."""
    if env.is_sqlite:
        pytest.skip("PostgreSQL's concurrent writers (SQLite's single writer: the tests above)")
    invitation_id = sent_invitation(cli, seed, env)
    company_id, firm_id = env.sql("SELECT company_id, firm_id FROM invitations WHERE id = :id", id=invitation_id)[0]
    x = Opening(seed.accountant, firm_id, company_id, invitation_detail(invitation_id))
    y = Opening(seed.admin, firm_id, company_id, {"purpose": "manage", "ref": company_id})
    inserts: list[str] = []

    def heard(connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.startswith("INSERT INTO events"):
            inserts.append("batch" if executemany else "one")

    engines = [instance.engine for instance in (cabinet, another_instance)]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", heard)
    try:
        outcomes = at_once(env, company_id, [(cabinet, [x, y]), (another_instance, [y, x])])
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", heard)
    assert outcomes == [[None, None], [None, None]]
    assert inserts == ["batch", "batch"]  # no batch failed and was written again row by row
    assert sorted(detail for _, detail in _opened(env)) == [
        f'{{"invitation_id": {invitation_id}, "purpose": "invitation", "ref": {invitation_id}}}',
        f'{{"purpose": "manage", "ref": {company_id}}}',
    ]
