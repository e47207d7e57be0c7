"""The outbox's edges: an operator's retry racing a send, and an email given up on.

Same stand-in relay as tests/test_relay.py (an aiosmtpd server on loopback;
the relay is outside the project); the worker, CLI and database are real
(SQLite, or PostgreSQL with CABINET_TEST_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from daemon.app import build
from daemon.config import load_config
from tests.conftest import Cli, FakeClock, free_port
from tests.test_relay import Relay, invite, make_cli, relay_env, send_due

WAIT = 120.0  # seconds: generous for a loaded machine; every wait ends on a condition


class GatedRelay(Relay):
    """A relay whose DATA answer waits until the test opens the gate: a send held mid-flight."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.gate = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data.set()
        await asyncio.to_thread(self.gate.wait, WAIT)
        return await super().handle_DATA(server, session, envelope)


def test_mail_retry_of_an_email_being_sent_does_not_send_it_twice(tmp_path: Path) -> None:
    relay = GatedRelay(free_port())
    relay.start()
    try:
        env = relay_env(tmp_path, relay)
        cli = make_cli(env)
        invite(cli)
        first, second = (build(load_config(env.config_path)) for _ in range(2))
        try:
            results: list[int] = []
            sending = threading.Thread(target=lambda: results.append(send_due(first)))
            sending.start()
            assert relay.in_data.wait(WAIT), "the first worker never reached DATA"
            # Mid-send: the operator asks for it again; the email is queued "now" but its claim stays.
            assert "Queued 1 email again: 1." in cli("mail", "retry", "1").output
            assert "Queued 0 emails again." in cli("mail", "retry", "--failed").output
            assert send_due(second) == 0  # the other worker cannot take an email someone is sending
            relay.gate.set()
            sending.join(WAIT)
            assert results == [1]
            assert send_due(second) == 0 and send_due(first) == 0  # sent: nothing left to send
            assert "email 1 is sent" in cli("mail", "retry", "1", expect=1).output
        finally:
            first.close()
            second.close()
        assert env.sql("SELECT state, attempts, claim_token FROM outbox") == [("sent", 1, None)]
        assert Counter(relay.message_ids()) == Counter(r[0] for r in env.sql("SELECT message_id FROM outbox"))
        assert len(relay.received) == 1
    finally:
        relay.gate.set()
        relay.stop()


def test_an_invitation_given_up_on_tells_the_inviter_like_a_bounce(tmp_path: Path, clock: FakeClock) -> None:
    relay = Relay(free_port())
    relay.start()
    try:
        env = relay_env(tmp_path, relay, "give_up_after = 600\n")
        cli: Cli = make_cli(env)
        relay.stop()  # the relay stays down longer than [mail] give_up_after
        invite(cli)
        cabinet = build(load_config(env.config_path), clock=clock)
        try:
            assert send_due(cabinet) == 0
            assert env.sql("SELECT state FROM invitations") == [("pending",)]  # deferred: nobody told yet
            clock.advance(minutes=11)
            assert send_due(cabinet) == 0
            assert cabinet.worker.stats.attempts["failed"] == 1
            assert env.sql("SELECT state FROM invitations") == [("bounced",)]
            rows = env.sql("SELECT kind, recipient, state FROM outbox ORDER BY id")
            assert rows == [("invitation", "marie@tremblay.example", "failed"),
                            ("invitation_bounced", "julie@roy.example", "pending")]
            assert env.sql("SELECT kind, channel FROM events WHERE kind = 'invitation.bounced'") == [
                ("invitation.bounced", "gave up")]
            relay.start()
            clock.advance(minutes=5)  # the notice was tried in the same pass, while the relay was down
            assert send_due(cabinet) == 1  # it goes out once the relay is back
            clock.advance(minutes=30)
            assert send_due(cabinet) == 0  # and only once
        finally:
            cabinet.close()
        (notice,) = relay.received
        assert notice.rcpt_tos == ["julie@roy.example"]
        text = (notice.original_content or b"").decode()
        assert "marie@tremblay.example" in text and "no server accepted it" in text
        # The email itself stays failed; `mail retry` refuses it (the next test).
        assert env.sql("SELECT state FROM outbox WHERE kind = 'invitation'") == [("failed",)]
    finally:
        relay.stop()


def test_mail_retry_refuses_an_invitation_given_up_on(tmp_path: Path, clock: FakeClock) -> None:
    """Given up on, its invitation is bounced and its inviter told: a retry would invite someone anyway."""
    relay = Relay(free_port())
    relay.start()
    try:
        env = relay_env(tmp_path, relay, "give_up_after = 600\n")
        cli: Cli = make_cli(env)
        relay.stop()
        invite(cli)
        cabinet = build(load_config(env.config_path), clock=clock)
        try:
            assert send_due(cabinet) == 0
            clock.advance(minutes=11)
            assert send_due(cabinet) == 0  # given up: the invitation is bounced, the company admin told
            assert env.sql("SELECT state FROM invitations") == [("bounced",)]
            before = env.sql("SELECT id, state, next_attempt_at, queued_at FROM outbox WHERE kind = 'invitation'")
            assert [row[:2] for row in before] == [(1, "failed")]

            refused = cli("mail", "retry", "1", expect=1).output
            assert "email 1 is an invitation that was marked bounced" in refused
            assert "cabinet invitation send" in refused and "Traceback" not in refused
            assert len(refused.strip().splitlines()) == 1
            assert "Queued 0 emails again." in cli("mail", "retry", "--failed").output
            # Nothing changed: still failed, not due, and no worker sends it once the relay is back.
            assert env.sql("SELECT id, state, next_attempt_at, queued_at FROM outbox WHERE kind = 'invitation'") == before
            relay.start()
            clock.advance(minutes=30)
            assert send_due(cabinet) == 1  # the company admin's notice only
        finally:
            cabinet.close()
        assert [message.rcpt_tos for message in relay.received] == [["julie@roy.example"]]
    finally:
        relay.stop()
