"""The accept's one read (daemon.accept_read): what it finds decides the write, in one statement."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from daemon.accept_read import ACCEPT_READ
from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.errors import NotAllowed
from tests.conftest import (
    PASSWORD, Browser, Cli, Env, FakeClock, Mailbox, RunningServer, csrf_of, invitation_token, link_in,
)

COMPANY, ACCOUNTANT, ADMIN = "Boulangerie Roy", "marie@tremblay.example", "julie@roy.example"


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("firm", "add", "Gagnon & Associés", "--email", "info@gagnon.example")
    for email, name, firm in (
        ("zoe@tremblay.example", "Zoé Roy", "Tremblay CPA"),
        (ACCOUNTANT, "Marie Tremblay", "Tremblay CPA"),
        ("paul@tremblay.example", "Paul Roy", "Tremblay CPA"),
        ("luc@gagnon.example", "Luc Gagnon", "Gagnon & Associés"),
    ):
        cli("staff", "add", email, "--name", name, "--firm", firm, "--password-stdin", input=PASSWORD + "\n")
    cli("staff", "disable", "paul@tremblay.example")
    cli("company", "add", COMPANY, "--admin-email", ADMIN, "--admin-name", "Julie Roy", "--locale", "en")
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


def statements_during(cabinet: Cabinet, call: Any) -> tuple[Any, list[str]]:
    seen: list[str] = []
    lock = threading.Lock()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with lock:
            seen.append(" ".join(statement.split()).upper())

    event.listen(cabinet.engine, "before_cursor_execute", record)
    try:
        return call(), seen
    finally:
        event.remove(cabinet.engine, "before_cursor_execute", record)


def never_in_the_lock(monkeypatch: pytest.MonkeyPatch, cabinet: Cabinet) -> None:
    """The accept is decided on its read: deciding it again inside the write lock would fail the test."""
    def locked(*args: Any) -> Any:
        raise AssertionError("the accept was decided again inside the write lock")

    monkeypatch.setattr(cabinet.roster, "accept_in", locked)


def test_an_accept_reads_once_then_tells_the_admin_and_each_active_member_in_order(
    cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    marie, token = cabinet.roster.find_staff(ACCOUNTANT).id, invitation_token(cabinet, sent.id)
    never_in_the_lock(monkeypatch, cabinet)
    result, statements = statements_during(cabinet, lambda: cabinet.roster.accept_invitation(token, marie, None))
    assert result.client.firm == "Tremblay CPA" and result.client.company == COMPANY
    assert result.invitation.state == "accepted" and result.invitation.accepted_by_email == ACCOUNTANT
    # One read decides everything; the write re-checks it with guarded statements, no SELECT.
    reads = [s for s in statements if s.startswith("SELECT")]
    assert len(reads) == 1, reads
    assert not any(s == "BEGIN" for s in statements[: statements.index(reads[0])])
    # The disabled member hears nothing; the other firm's staff neither; members in the order they joined.
    rows = env.sql("SELECT kind, recipient FROM outbox WHERE kind <> 'invitation' ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [
        ("invitation_accepted", ADMIN), ("client_added", "zoe@tremblay.example"), ("client_added", ACCOUNTANT),
    ]


def test_an_accept_connects_the_entry_added_under_the_companys_name(
    cabinet: Cabinet, cli: Cli, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("client", "add", "--firm", "Tremblay CPA", "--kind", "business", "--name", COMPANY.upper(), "--billing", "none")
    (entry,) = cabinet.roster.list_clients("Tremblay CPA")
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    never_in_the_lock(monkeypatch, cabinet)
    result = cabinet.roster.accept_invitation(invitation_token(cabinet, sent.id), cabinet.roster.find_staff(ACCOUNTANT).id, None)
    (client,) = cabinet.roster.list_clients("Tremblay CPA")
    assert result.client.id == client.id == entry.id
    assert client.company == COMPANY and client.status == "active" and client.billing == "self-paid"
    assert result.client == client
    assert cabinet.roster.list_clients("Gagnon & Associés") == []


def test_the_companys_own_entry_comes_before_one_under_its_name(
    cabinet: Cabinet, cli: Cli, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two entries the accept may find: one under the company's name with no company yet, and the company's
    # own (on the roster under an older name): the company's own is the one reconnected.
    for name in (COMPANY.upper(), "Ancienne Boulangerie"):
        cli("client", "add", "--firm", "Tremblay CPA", "--kind", "business", "--name", name, "--billing", "none")
    env.write("UPDATE clients SET company_id = (SELECT id FROM companies WHERE name = :company) "
              "WHERE name = 'Ancienne Boulangerie'", company=COMPANY)
    own = env.sql("SELECT id FROM clients WHERE company_id IS NOT NULL")[0][0]
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    token, user_id = invitation_token(cabinet, sent.id), cabinet.roster.find_staff(ACCOUNTANT).id
    plan = cabinet.roster.plan_accept(token, user_id, None)
    assert plan is not None and plan.client is not None
    assert (plan.client.id, plan.client.company_id) == (own, env.sql("SELECT id FROM companies")[0][0])
    never_in_the_lock(monkeypatch, cabinet)
    assert cabinet.roster.accept_invitation(token, user_id, None).client.id == own
    assert env.sql("SELECT count(*) FROM clients WHERE company_id IS NULL") == [(1,)]


def test_a_member_of_two_firms_accepts_for_the_one_they_name(cabinet: Cabinet, cli: Cli) -> None:
    both = "ines@both.example"
    cli("staff", "add", both, "--name", "Inès Côté", "--firm", "Tremblay CPA", "--firm", "Gagnon & Associés",
        "--password-stdin", input=PASSWORD + "\n")
    sent = cabinet.roster.send_invitation(COMPANY, both)
    token, user_id = invitation_token(cabinet, sent.id), cabinet.roster.find_staff(both).id
    assert cabinet.roster.plan_accept(token, user_id, None) is None  # two firms, none named: the refusal's
    for firm in ("Gagnon & Associés", "Tremblay CPA"):
        firm_id = cabinet.roster.find_firm(firm).id
        plan = cabinet.roster.plan_accept(token, user_id, firm_id)
        assert plan is not None and (plan.firm_id, plan.firm_name) == (firm_id, firm)
    # The firm's active staff to tell, by id: Gagnon's are Luc and Inès.
    plan = cabinet.roster.plan_accept(token, user_id, cabinet.roster.find_firm("Gagnon & Associés").id)
    assert plan is not None
    assert sorted(email["recipient"] for email in plan.emails) == sorted([ADMIN, "luc@gagnon.example", both])


def test_an_accept_for_a_firm_that_is_not_the_users_is_refused_as_before(cabinet: Cabinet, env: Env) -> None:
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    gagnon = cabinet.roster.find_firm("Gagnon & Associés").id
    with pytest.raises(NotAllowed) as refused:
        cabinet.roster.accept_invitation(invitation_token(cabinet, sent.id), cabinet.roster.find_staff(ACCOUNTANT).id, gagnon)
    assert refused.value.code == "firm.not_member_connect"
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    assert env.sql("SELECT count(*) FROM clients") == [(0,)]


def test_an_accept_post_reads_the_session_and_the_accept_one_statement_each(
    env: Env, cli: Cli, mailbox: Mailbox, clock: FakeClock
) -> None:
    """Over HTTP: the visitor (session, user, firms) is one statement, the accept's read another."""
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("staff", "add", ACCOUNTANT, "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    cli("company", "add", COMPANY, "--admin-email", ADMIN, "--admin-name", "Julie Roy", "--locale", "en")
    server = RunningServer(env, clock)
    server.start()
    browser = Browser(env.base_url)
    try:
        cli("invitation", "send", "--company", COMPANY, "--email", ACCOUNTANT)
        link = link_in(mailbox.wait(ACCOUNTANT, subject="Invitation", count=1)[-1])
        browser.sign_in(link, ACCOUNTANT)
        token = csrf_of(browser.get(link).text)
        answer, statements = statements_during(
            server.cabinet, lambda: browser.http.post(link + "/accept", data={"csrf_token": token})
        )
        assert answer.status_code == 303
        # (The outbox worker and the scheduler run statements of their own meanwhile: pick the request's.)
        visitor = [s for s in statements if "FROM WEB_SESSIONS" in s or "FROM USERS LEFT OUTER JOIN MEMBERSHIPS" in s]
        assert len(visitor) == 1 and "FROM WEB_SESSIONS JOIN USERS" in visitor[0], visitor
        # (The scheduler's expiry sweep also reads invitations: "state … AND expires_at <=", not the accept's.)
        accept = [s for s in statements if s.startswith("SELECT") and "INVITATIONS" in s and "OUTBOX" not in s
                  and "INVITATIONS.EXPIRES_AT <=" not in s]
        assert len(accept) == 1 and "AS CHOSEN" in accept[0], accept
        assert env.sql("SELECT state FROM invitations") == [("accepted",)]
    finally:
        browser.close()
        server.stop()


def test_on_sqlite_the_staff_to_tell_come_from_the_index_in_order_not_sorted(cabinet: Cabinet) -> None:
    """The staff list's order (their users') is read from ``ix_memberships_firm_user`` (migration 0024):
    SQLite's plan for it has no temporary b-tree. (The products' list still sorts by position: a few rows
    of a table no index orders that way.)"""
    if cabinet.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's query plan (PostgreSQL's json_agg sorts its own input)")
    statement = ACCEPT_READ["sqlite"].compile(dialect=cabinet.engine.dialect)
    binds = statement.construct_params({"id": 1, "user_id": 1, "firm_id": None})
    with cabinet.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(statement),
                                    tuple(binds[name] for name in statement.positiontup)).all()
    staff = [parent for _, parent, _, detail in plan if "SEARCH memberships USING COVERING INDEX ix_memberships_firm_user" in detail]
    assert len(staff) == 1, plan
    assert [detail for _, parent, _, detail in plan if parent == staff[0] and "TEMP B-TREE" in detail] == [], plan
