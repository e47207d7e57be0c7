"""Two requests on one row at once: exactly one wins, the other hears what happened, the emails match.

Each contender is a thread calling the real domain functions with its own
sessions. On PostgreSQL the race is forced, not hoped for: the domain is built
with a checkpoint (``DomainContext.checkpoint``, the seam of
``daemon.transitions``) that holds every contender between its read and its
guarded UPDATE until all of them got there, then lets them go together. Both
have read "pending"; both UPDATE; the row lock orders them and the second
matches nothing.

On SQLite a write transaction takes the database lock at BEGIN (``BEGIN
IMMEDIATE``), so two contenders cannot both be between read and write: holding
one there would hold the other at BEGIN and never meet. There the contenders run
concurrently without the checkpoint, and the same outcome is checked.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import select

from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.domain import DomainContext, request_key
from daemon.errors import CabinetError, InvalidState
from daemon.inbound import Inbound
from daemon.models import Invitation, OutboxMessage
from daemon.onboarding import Onboarding
from daemon.roster import InvitationUnavailable, Roster
from daemon.tokens import Purpose
from daemon.transfers import BillingTransfers, TransferChanged, TransferUnavailable
from daemon.transitions import Checkpoint
from tests.conftest import PASSWORD, Browser, Cli, Env, FakeClock, Mailbox, any_link_in, csrf_of, invitation_token
from tests.inbound_helpers import TRUSTED_MTA, reply

# A safety net for a broken test, never a pace: contenders meet as soon as both arrive.
MEETING_TIMEOUT = 120


class Gate:
    """A checkpoint that holds every contender between its read and its write, then lets them write in ``order``.

    Each contender stops at its first transition (what follows it runs freely). When
    all have read, the first in ``order`` writes and commits; only then does the next
    write. That is the lost-update interleaving: the second writes on a read that is
    no longer true, and only a guarded UPDATE notices.
    """

    def __init__(self, order: tuple[int, ...]) -> None:
        self.order = order
        self._me = threading.local()
        self._cond = threading.Condition()
        self._arrived: set[int] = set()
        self._done: set[int] = set()

    def enter(self, index: int) -> None:
        self._me.index = index
        self._me.passed = False

    def __call__(self, table: str, row_id: int, wanted: str) -> None:
        if getattr(self._me, "passed", True):
            return
        self._me.passed = True
        me = self._me.index
        before = self.order[: self.order.index(me)]
        with self._cond:
            self._arrived.add(me)
            self._cond.notify_all()
            released = self._cond.wait_for(
                lambda: len(self._arrived) == len(self.order) and all(i in self._done for i in before),
                timeout=MEETING_TIMEOUT,
            )
        assert released, f"contender {me} was never released"

    def finished(self, index: int) -> None:
        """A contender returned or failed: it has written (or never will)."""
        with self._cond:
            self._arrived.add(index)
            self._done.add(index)
            self._cond.notify_all()

    def wait_arrivals(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self._arrived) >= count, timeout=MEETING_TIMEOUT)


@dataclass
class Outcome:
    result: Any = None
    error: BaseException | None = None

    @property
    def won(self) -> bool:
        return self.error is None


def contend(*calls: Callable[[], Any], gate: Gate | None = None, between: Callable[[], None] | None = None) -> list[Outcome]:
    """Run each call in its own thread; ``between`` runs once the first is held at its checkpoint."""
    outcomes = [Outcome() for _ in calls]

    def runner(i: int) -> None:
        if gate is not None:
            gate.enter(i)
        try:
            outcomes[i].result = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - the test inspects what each contender got
            outcomes[i].error = exc
        finally:
            if gate is not None:
                gate.finished(i)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(len(calls))]
    if between is not None:
        threads[0].start()
        if gate is not None:
            gate.wait_arrivals(1)
        else:
            threads[0].join()
        between()
        for thread in threads[1:]:
            thread.start()
    else:
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join(MEETING_TIMEOUT)
        assert not thread.is_alive(), "a contender never finished"
    return outcomes


@dataclass
class Domain:
    """The domain services as the composition root builds them, with a checkpoint of the test's own."""

    cabinet: Cabinet
    ctx: DomainContext
    roster: Roster
    transfers: BillingTransfers
    onboarding: Onboarding
    inbound: Inbound


def gated(cabinet: Cabinet, checkpoint: Checkpoint | None) -> Domain:
    ctx = cabinet.roster.context if checkpoint is None else replace(cabinet.roster.context, checkpoint=checkpoint)
    roster = Roster(ctx)
    config = cabinet.config
    inbound = Inbound(ctx, roster, config.inbound, config.smtp.domain, config.mail.from_address)
    return Domain(cabinet, ctx, roster, BillingTransfers(ctx), Onboarding(ctx), inbound)


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[inbound]\ntrusted_authserv_ids = ["{TRUSTED_MTA}"]\n')
    return env


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("staff", "add", "marie@tremblay.example", "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy",
        "--locale", "en")
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


COMPANY, ACCOUNTANT, ADMIN = "Boulangerie Roy", "marie@tremblay.example", "julie@roy.example"


@pytest.fixture(params=[(0, 1), (1, 0)], ids=["first-writes-first", "second-writes-first"])
def order(request: pytest.FixtureRequest) -> tuple[int, ...]:
    """Which contender writes first, once both have read (PostgreSQL; SQLite serialises them anyway)."""
    return tuple(request.param)


def new_gate(env: Env, order: tuple[int, ...]) -> Gate | None:
    if env.is_sqlite:
        if order != (0, 1):
            pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE): no order to choose")
        return None
    return Gate(order)


def emails(env: Env) -> list[tuple[str, str]]:
    """The queued emails, as (template, recipient), in order."""
    return [(r[0], r[1]) for r in env.sql("SELECT kind, recipient FROM outbox ORDER BY id")]


def one_winner(outcomes: list[Outcome], error: type[CabinetError]) -> tuple[int, Outcome]:
    winners = [i for i, o in enumerate(outcomes) if o.won]
    assert len(winners) == 1, [o.error for o in outcomes]
    loser = outcomes[1 - winners[0]]
    assert isinstance(loser.error, error), repr(loser.error)
    assert isinstance(loser.error, InvalidState) and loser.error.current is not None
    return winners[0], loser


def user_id(cabinet: Cabinet) -> int:
    return cabinet.roster.find_staff(ACCOUNTANT).id


# -- invitations -----------------------------------------------------------------------------------


def test_accept_and_revoke(cabinet: Cabinet, env: Env, order: tuple[int, ...]) -> None:
    gate = new_gate(env, order)
    domain = gated(cabinet, gate)
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    token = invitation_token(cabinet, sent.id)
    me = user_id(cabinet)

    outcomes = contend(
        lambda: domain.roster.accept_invitation(token, me, None),
        lambda: domain.roster.revoke_invitation(sent.id),
        gate=gate,
    )
    winner, loser = one_winner(outcomes, InvitationUnavailable)
    (state,) = env.sql("SELECT state FROM invitations")
    roster = cabinet.roster.list_clients("Tremblay CPA")
    if winner == 0:
        assert state == ("accepted",) and loser.error.view.status == "accepted"
        assert [c.name for c in roster] == [COMPANY]
        assert emails(env) == [("invitation", ACCOUNTANT), ("invitation_accepted", ADMIN), ("client_added", ACCOUNTANT)]
    else:
        assert state == ("revoked",) and loser.error.view.status == "revoked"
        assert roster == []
        assert emails(env) == [("invitation", ACCOUNTANT)]


def test_accept_and_resend(cabinet: Cabinet, env: Env, order: tuple[int, ...]) -> None:
    gate = new_gate(env, order)
    domain = gated(cabinet, gate)
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    token = invitation_token(cabinet, sent.id)
    me = user_id(cabinet)

    outcomes = contend(
        lambda: domain.roster.accept_invitation(token, me, None),
        lambda: domain.roster.send_invitation(COMPANY, ACCOUNTANT),
        gate=gate,
    )
    states = [r[0] for r in env.sql("SELECT state FROM invitations ORDER BY id")]
    roster = cabinet.roster.list_clients("Tremblay CPA")
    if env.is_sqlite and all(o.won for o in outcomes):
        # Serialised with the accept first, the resend found nothing pending: a new invitation after
        # the acceptance, as a minute later. (Only PostgreSQL can hold both between read and write.)
        assert states == ["accepted", "pending"]
        assert [c.name for c in roster] == [COMPANY]
        return
    winner, loser = one_winner(outcomes, InvitationUnavailable)
    if winner == 0:
        # The accept won: the resend is told the invitation was accepted, and sends nothing.
        assert states == ["accepted"] and loser.error.view.status == "accepted"
        assert [c.name for c in roster] == [COMPANY]
        assert emails(env) == [("invitation", ACCOUNTANT), ("invitation_accepted", ADMIN), ("client_added", ACCOUNTANT)]
    else:
        # The resend won: the old link is superseded, nobody joins the roster, one fresh invitation.
        assert states == ["superseded", "pending"] and loser.error.view.status == "superseded"
        assert roster == []
        assert emails(env) == [("invitation", ACCOUNTANT), ("invitation", ACCOUNTANT)]


def test_accept_by_link_and_accept_by_reply(cabinet: Cabinet, env: Env, order: tuple[int, ...]) -> None:
    gate = new_gate(env, order)
    domain = gated(cabinet, gate)
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    token = invitation_token(cabinet, sent.id)
    me = user_id(cabinet)
    with cabinet.sessions() as s:
        ref = s.scalar(select(OutboxMessage.ref).where(OutboxMessage.invitation_id == sent.id))
    assert ref is not None
    reply_to = cabinet.outbox.address(Purpose.REPLY, ref)
    message: EmailMessage = reply(reply_to, ACCOUNTANT, "Accept")
    stored = domain.inbound.store(ACCOUNTANT, [reply_to], message.as_bytes(policy=SMTP_POLICY))

    outcomes = contend(
        lambda: domain.roster.accept_invitation(token, me, None),
        lambda: domain.inbound.process(stored),
        gate=gate,
    )
    # The reply's processing always finishes (a refused command is an outcome, not a failure).
    assert outcomes[1].won, outcomes[1].error
    (row,) = env.sql("SELECT state, kind, outcome FROM inbound")
    assert row[0] == "processed" and row[1] == "command"
    link_won = outcomes[0].won
    if link_won:
        assert "not executed" in row[2] and "accepted" in row[2]
        assert env.sql("SELECT channel FROM events WHERE kind = 'invitation.accepted'") == [("link",)]
    else:
        assert isinstance(outcomes[0].error, InvitationUnavailable)
        assert outcomes[0].error.view.status == "accepted"
        assert "accepted by reply" in row[2]
        assert env.sql("SELECT channel FROM events WHERE kind = 'invitation.accepted'") == [("reply",)]
    assert env.sql("SELECT state FROM invitations") == [("accepted",)]
    assert [c.name for c in cabinet.roster.list_clients("Tremblay CPA")] == [COMPANY]
    assert emails(env) == [("invitation", ACCOUNTANT), ("invitation_accepted", ADMIN), ("client_added", ACCOUNTANT)]


def test_renew_twice(cabinet: Cabinet, env: Env, clock: FakeClock, order: tuple[int, ...]) -> None:
    gate = new_gate(env, order)
    domain = gated(cabinet, gate)
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    clock.advance(days=31)
    cabinet.roster.expire_invitations()
    with cabinet.sessions() as s:
        old = s.get(Invitation, sent.id)
        assert old is not None and old.state == "expired"
        renewal = cabinet.signer.sign(Purpose.MANAGE, ["renew", old.id, old.nonce])
    before = emails(env)

    outcomes = contend(
        lambda: domain.roster.renew_invitation(renewal),
        lambda: domain.roster.renew_invitation(renewal),
        gate=gate,
    )
    # Both presses answer with the one invitation the winner sent: one new row, one new email.
    assert all(o.won for o in outcomes), [o.error for o in outcomes]
    assert outcomes[0].result.id == outcomes[1].result.id != sent.id
    assert [r[0] for r in env.sql("SELECT state FROM invitations ORDER BY id")] == ["superseded", "pending"]
    assert emails(env)[len(before):] == [("invitation", ACCOUNTANT)]


# -- billing transfers -----------------------------------------------------------------------------


@pytest.fixture
def connected(cabinet: Cabinet) -> Cabinet:
    """The company is on Tremblay CPA's roster (invitation accepted)."""
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    cabinet.roster.accept_invitation(invitation_token(cabinet, sent.id), user_id(cabinet), None)
    return cabinet


def transfer_token(cabinet: Cabinet, transfer_id: int) -> str:
    from daemon.models import BillingTransfer

    with cabinet.sessions() as s:
        transfer = s.get(BillingTransfer, transfer_id)
        assert transfer is not None
        return cabinet.signer.sign(Purpose.TRANSFER, [transfer.id, transfer.nonce])


def test_allow_twice(connected: Cabinet, env: Env, order: tuple[int, ...]) -> None:
    cabinet = connected
    gate = new_gate(env, order)
    domain = gated(cabinet, gate)
    first = cabinet.transfers.allow(COMPANY, "Tremblay CPA")
    before = emails(env)

    outcomes = contend(
        lambda: domain.transfers.allow(COMPANY, "Tremblay CPA"),
        lambda: domain.transfers.allow(COMPANY, "Tremblay CPA"),
        gate=gate,
    )
    if env.is_sqlite:
        # Serialised: the second allow replaces the first one's permission, as allowing again does.
        assert all(o.won for o in outcomes)
        assert [r[0] for r in env.sql("SELECT state FROM billing_transfers ORDER BY id")] == [
            "superseded", "superseded", "pending"]
        return
    winner, loser = one_winner(outcomes, TransferChanged)
    assert loser.error.view is not None and loser.error.view.id == outcomes[winner].result.id
    states = [r[0] for r in env.sql("SELECT id, state FROM billing_transfers ORDER BY id")]
    assert len(states) == 2 and first.id != outcomes[winner].result.id
    assert [r[0] for r in env.sql("SELECT state FROM billing_transfers ORDER BY id")] == ["superseded", "pending"]
    assert emails(env)[len(before):] == [("transfer_allowed", ACCOUNTANT)]


def test_complete_and_expire(connected: Cabinet, env: Env, clock: FakeClock, order: tuple[int, ...]) -> None:
    cabinet = connected
    gate = new_gate(env, order)
    domain = gated(cabinet, gate)
    allowed = cabinet.transfers.allow(COMPANY, "Tremblay CPA")
    token = transfer_token(cabinet, allowed.id)
    me = user_id(cabinet)
    before = emails(env)

    # The completion has read "pending" before the deadline; the deadline passes; the sweep runs.
    outcomes = contend(
        lambda: domain.transfers.complete(token, me),
        lambda: domain.transfers.sweep(),
        gate=gate,
        between=lambda: clock.advance(hours=49),
    )
    assert outcomes[1].won, outcomes[1].error
    (state,) = env.sql("SELECT state FROM billing_transfers")
    roster = cabinet.roster.list_clients("Tremblay CPA")
    if outcomes[0].won:
        assert state == ("completed",) and outcomes[1].result["transfers_expired"] == 0
        assert [c.billing for c in roster] == ["wholesale"]
        assert emails(env)[len(before):] == [("transfer_completed", ADMIN)]
    else:
        assert isinstance(outcomes[0].error, TransferUnavailable)
        assert outcomes[0].error.view.status == "expired"
        assert state == ("expired",) and outcomes[1].result["transfers_expired"] == 1
        assert [c.billing for c in roster] == ["self-paid"]
        assert sorted(emails(env)[len(before):]) == [("transfer_expired_client", ADMIN), ("transfer_expired_firm", ACCOUNTANT)]


# -- a button pressed twice ------------------------------------------------------------------------


def test_invite_pressed_twice_at_once_sends_once(cabinet: Cabinet, env: Env) -> None:
    # Both presses carry the same idempotency key: the second queues on the key, then reads the first's result.
    key = request_key("invite", "manage-link-token", ACCOUNTANT)
    outcomes = contend(
        lambda: cabinet.roster.send_invitation(COMPANY, ACCOUNTANT, "link", key),
        lambda: cabinet.roster.send_invitation(COMPANY, ACCOUNTANT, "link", key),
    )
    assert all(o.won for o in outcomes), [o.error for o in outcomes]
    assert outcomes[0].result.id == outcomes[1].result.id
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    assert emails(env) == [("invitation", ACCOUNTANT)]


def test_invite_pressed_twice_on_the_manage_page_sends_once(cabinet: Cabinet, env: Env, cli: Cli, server,
                                                            mailbox: Mailbox, clock: FakeClock) -> None:
    cli("company", "send-link", COMPANY)
    manage = any_link_in(mailbox.wait(ADMIN, subject="Manage")[-1])
    admin = Browser(env.base_url)
    try:
        csrf = csrf_of(admin.get(manage).text)
        for _ in range(2):
            pressed = admin.http.post(manage + "/invite", data={"csrf_token": csrf, "email": ACCOUNTANT})
            assert pressed.status_code == 303, pressed.text
        assert env.sql("SELECT state FROM invitations") == [("pending",)]
        assert emails(env) == [("manage_link", ADMIN), ("invitation", ACCOUNTANT)]
        # Later, the same press is a new request: it replaces the pending invitation, as sending again does.
        clock.advance(minutes=11)
        assert admin.http.post(manage + "/invite", data={"csrf_token": csrf, "email": ACCOUNTANT}).status_code == 303
        assert [r[0] for r in env.sql("SELECT state FROM invitations ORDER BY id")] == ["superseded", "pending"]
    finally:
        admin.close()


# -- an accept's read before the write lock, then a change, then its write -------------------------


def _change_after_the_read(monkeypatch: pytest.MonkeyPatch, cabinet: Cabinet, change: Callable[[], None]) -> None:
    """Run ``change`` (committed) between an accept's read (outside the write lock) and its write."""
    plan = cabinet.roster.plan_accept

    def read_then_change(*args: Any) -> Any:
        read = plan(*args)
        assert read is not None, "the read found the invitation acceptable"
        change()
        return read

    monkeypatch.setattr(cabinet.roster, "plan_accept", read_then_change)


def test_a_revoke_after_the_accepts_read_wins(cabinet: Cabinet, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    _change_after_the_read(monkeypatch, cabinet, lambda: cabinet.roster.revoke_invitation(sent.id))
    with pytest.raises(InvitationUnavailable) as refused:
        cabinet.roster.accept_invitation(invitation_token(cabinet, sent.id), user_id(cabinet), None)
    assert refused.value.view.status == "revoked"
    assert env.sql("SELECT state FROM invitations") == [("revoked",)]
    assert cabinet.roster.list_clients("Tremblay CPA") == []
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(0,)]
    assert emails(env) == [("invitation", ACCOUNTANT)]


def test_a_client_added_after_the_accepts_read_is_the_one_connected(
    cabinet: Cabinet, env: Env, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accept's insert finds the entry added meanwhile (same name, no company): it inserts nothing,
    and the accept, decided again inside the lock, connects that entry, as in a serial order."""
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    _change_after_the_read(monkeypatch, cabinet, lambda: cli(
        "client", "add", "--firm", "Tremblay CPA", "--kind", "business", "--name", COMPANY.upper(),
        "--billing", "none"))
    result = cabinet.roster.accept_invitation(invitation_token(cabinet, sent.id), user_id(cabinet), None)
    (client,) = cabinet.roster.list_clients("Tremblay CPA")
    assert client.id == result.client.id and client.company == COMPANY and client.status == "active"
    assert env.sql("SELECT state FROM invitations") == [("accepted",)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(1,)]
    assert emails(env) == [("invitation", ACCOUNTANT), ("invitation_accepted", ADMIN), ("client_added", ACCOUNTANT)]


# -- accepts written together (the link handler's batch) --------------------------------------------


def test_planned_accepts_written_together_each_get_their_own_outcome(
    cabinet: Cabinet, env: Env, cli: Cli
) -> None:
    """``accept_planned_many`` writes several planned accepts in one unit: one whose invitation was revoked
    since its plan is undone alone and comes back None (decide again in the lock), the others are written."""
    cli("company", "add", "Fromagerie Roy", "--admin-email", "paul@fromagerie.example", "--admin-name", "Paul Roy",
        "--locale", "en")
    first = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    second = cabinet.roster.send_invitation("Fromagerie Roy", ACCOUNTANT)
    plans = [cabinet.roster.plan_accept(invitation_token(cabinet, sent.id), user_id(cabinet), None)
             for sent in (first, second)]
    assert all(plan is not None for plan in plans)
    cabinet.roster.revoke_invitation(first.id)
    revoked, accepted = cabinet.roster.accept_planned_many([(plan, "link") for plan in plans])
    assert revoked is None
    assert accepted is not None and not isinstance(accepted, Exception)
    assert accepted.client.company == "Fromagerie Roy" and accepted.invitation.state == "accepted"
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [(first.id, "revoked"), (second.id, "accepted")]
    assert [c.company for c in cabinet.roster.list_clients("Tremblay CPA")] == ["Fromagerie Roy"]
    assert env.sql("SELECT c.name FROM events e JOIN companies c ON c.id = e.company_id "
                   "WHERE e.kind = 'invitation.accepted'") == [("Fromagerie Roy",)]
    # Only the written accept's two notices were queued; the undone one's are gone with its savepoint.
    assert emails(env)[2:] == [("invitation_accepted", "paul@fromagerie.example"), ("client_added", ACCOUNTANT)]
    # Decided again inside the lock, the revoked one says so.
    with pytest.raises(InvitationUnavailable) as refused:
        cabinet.roster.accept_unplanned(invitation_token(cabinet, first.id), user_id(cabinet), None, False)
    assert refused.value.view.status == "revoked"


def test_a_failing_planned_accept_fails_alone(cabinet: Cabinet, env: Env, cli: Cli) -> None:
    """A planned accept whose write fails (here: its outbox row breaks a constraint) is that accept's
    outcome, undone to its savepoint; the accept written with it in the same unit is kept."""
    cli("company", "add", "Fromagerie Roy", "--admin-email", "paul@fromagerie.example", "--admin-name", "Paul Roy",
        "--locale", "en")
    first = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    second = cabinet.roster.send_invitation("Fromagerie Roy", ACCOUNTANT)
    bad, good = (cabinet.roster.plan_accept(invitation_token(cabinet, sent.id), user_id(cabinet), None)
                 for sent in (first, second))
    assert bad is not None and good is not None
    # The same Message-ID twice: the outbox's unique key refuses the second row.
    bad.emails[1]["message_id"] = bad.emails[0]["message_id"]
    failed, accepted = cabinet.roster.accept_planned_many([(bad, "link"), (good, "link")])
    assert isinstance(failed, Exception)
    assert accepted is not None and not isinstance(accepted, Exception)
    assert env.sql("SELECT id, state FROM invitations ORDER BY id") == [(first.id, "pending"), (second.id, "accepted")]
    assert [c.company for c in cabinet.roster.list_clients("Tremblay CPA")] == ["Fromagerie Roy"]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(1,)]
