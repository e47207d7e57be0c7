"""The outbox against a relay that refuses, defers, drops and dawdles.

The relay is outside the project, so an aiosmtpd server on loopback stands in
for it, told per SMTP stage what to answer (250, 451, 550) or to drop the
connection; everything on Cabinet's side is real: the CLI, the worker, the
SMTP client, the database (SQLite, or PostgreSQL with CABINET_TEST_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner

from daemon.app import Cabinet, build
from daemon.cli import cli as cabinet_cli
from daemon.config import load_config
from daemon.service import Service
from tests.conftest import Cli, Env, FakeClock, free_port, send_due_at_once, write_config


class Relay:
    """An SMTP relay stand-in: each stage answers from its script (then 250), or drops the connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.script: dict[str, list[str]] = {"MAIL": [], "RCPT": [], "DATA": []}
        self.delay = 0.0  # seconds DATA takes, for a slow relay
        self.received: list[Envelope] = []
        self.in_data = threading.Event()
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _answer(self, stage: str, server: SMTP) -> str:
        with self._lock:
            answer = self.script[stage].pop(0) if self.script[stage] else "250 2.0.0 OK"
        if answer == "drop":
            assert server.transport is not None
            server.transport.close()
        return answer

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        answer = self._answer("MAIL", server)
        if answer.startswith("250"):
            envelope.mail_from = address
        return answer

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        answer = self._answer("RCPT", server)
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self._answer("DATA", server)
        if answer.startswith("250"):
            with self._lock:
                self.received.append(envelope)
            answer = f"250 2.0.0 Ok: queued as Q{len(self.received)}"
        return answer

    def message_ids(self) -> list[str]:
        with self._lock:
            return [str(message_from_bytes(e.original_content or b"")["Message-ID"]) for e in self.received]


@pytest.fixture
def relay() -> Iterator[Relay]:
    stand_in = Relay(free_port())
    stand_in.start()
    yield stand_in
    stand_in.stop()


def relay_env(tmp_path: Path, relay: Relay, extra: str = "") -> Env:
    return write_config(
        tmp_path,
        # One connection: a scripted relay answers in arrival order, so its emails go one at a time.
        f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {relay.port}\nrelay_tls = "none"\n'
        f'relay_connections = 1\n{extra}',
    )


def make_cli(env: Env) -> Cli:
    def run(*args: str, input: str | None = None, expect: int = 0) -> Any:
        result = CliRunner().invoke(cabinet_cli, ["--config", str(env.config_path), *args], input=input)
        assert result.exit_code == expect, result.output
        return result

    run("init")
    run("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    run("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy",
        "--locale", "en")
    return run


@pytest.fixture
def env(tmp_path: Path, relay: Relay) -> Env:
    return relay_env(tmp_path, relay)


@pytest.fixture
def cli(env: Env) -> Cli:
    return make_cli(env)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


def send_due(cabinet: Cabinet) -> int:
    return asyncio.run(cabinet.worker.send_due())


def invite(cli: Cli, email: str = "marie@tremblay.example") -> None:
    cli("invitation", "send", "--company", "Boulangerie Roy", "--email", email)


def test_a_550_at_rcpt_bounces_the_invitation_and_tells_the_inviter(
    env: Env, cli: Cli, cabinet: Cabinet, relay: Relay
) -> None:
    relay.script["RCPT"] = ["550 5.1.1 <marie@tremblay.example>: Recipient address rejected: User unknown"]
    invite(cli)
    assert send_due(cabinet) == 1  # the invitation is refused; the notice to the inviter goes out
    assert env.sql("SELECT state, bounce_reason FROM invitations") == [
        ("bounced", "550 5.1.1 <marie@tremblay.example>: Recipient address rejected: User unknown")]
    rows = env.sql("SELECT kind, recipient, state, attempts, last_answer FROM outbox ORDER BY id")
    assert [r[:4] for r in rows] == [("invitation", "marie@tremblay.example", "bounced", 1),
                                      ("invitation_bounced", "julie@roy.example", "sent", 1)]
    assert rows[0][4].startswith("550 5.1.1") and rows[1][4].startswith("250 2.0.0 Ok: queued as")
    # The same event a DSN records: one rule whoever reports the failure.
    assert env.sql("SELECT kind FROM events WHERE kind = 'invitation.bounced'") == [("invitation.bounced",)]
    (notice,) = relay.received
    assert notice.rcpt_tos == ["julie@roy.example"]
    assert "marie@tremblay.example" in (notice.original_content or b"").decode()
    assert send_due(cabinet) == 0  # nothing is retried
    assert cabinet.worker.stats.attempts == Counter({"bounced": 1, "sent": 1})


@pytest.mark.parametrize("stage", ["MAIL", "DATA"])
def test_a_5xx_at_mail_or_data_is_a_bounce_too(env: Env, cli: Cli, cabinet: Cabinet, relay: Relay, stage: str) -> None:
    relay.script[stage] = ["554 5.7.1 Message refused"]
    invite(cli)
    send_due(cabinet)
    assert env.sql("SELECT state FROM invitations") == [("bounced",)]
    assert env.sql("SELECT state, last_answer FROM outbox WHERE kind = 'invitation'") == [
        ("bounced", "554 5.7.1 Message refused")]


def test_a_451_then_250_is_delivered_once(env: Env, cli: Cli, cabinet: Cabinet, relay: Relay, clock: FakeClock) -> None:
    relay.script["DATA"] = ["451 4.3.0 Temporary lookup failure"]
    invite(cli)
    assert send_due(cabinet) == 0
    (state, attempts, answer), = env.sql("SELECT state, attempts, last_answer FROM outbox")
    assert (state, attempts, answer) == ("pending", 1, "451 4.3.0 Temporary lookup failure")
    assert send_due(cabinet) == 0  # not due before its backoff
    clock.advance(minutes=1)
    assert send_due(cabinet) == 1
    assert len(relay.received) == 1
    assert env.sql("SELECT state, attempts FROM outbox") == [("sent", 2)]
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    assert cabinet.worker.stats.attempts == Counter({"deferred": 1, "sent": 1})
    assert cabinet.worker.stats.retries == 1


def test_a_dropped_connection_is_retried(env: Env, cli: Cli, cabinet: Cabinet, relay: Relay, clock: FakeClock) -> None:
    relay.script["RCPT"] = ["drop"]
    invite(cli)
    assert send_due(cabinet) == 0
    (state, answer), = env.sql("SELECT state, last_answer FROM outbox")
    assert state == "pending" and "connection lost" in answer
    clock.advance(minutes=1)
    assert send_due(cabinet) == 1
    assert len(relay.received) == 1


def test_a_relay_down_then_up_delivers_after_a_retry(
    env: Env, cli: Cli, cabinet: Cabinet, relay: Relay, clock: FakeClock
) -> None:
    relay.stop()
    invite(cli)
    for _ in range(3):
        assert send_due(cabinet) == 0
        clock.advance(minutes=5)
    (state, attempts, answer), = env.sql("SELECT state, attempts, last_answer FROM outbox")
    assert (state, attempts) == ("pending", 3) and "relay unreachable" in answer
    relay.start()
    assert send_due(cabinet) == 1
    assert relay.message_ids() == [r[0] for r in env.sql("SELECT message_id FROM outbox")]
    assert env.sql("SELECT state, attempts FROM outbox") == [("sent", 4)]


def test_mail_retry_requeues_what_was_given_up(tmp_path: Path, relay: Relay, clock: FakeClock) -> None:
    env = relay_env(tmp_path, relay, "give_up_after = 600\n")
    cli = make_cli(env)
    relay.stop()
    invite(cli)
    invite(cli, "paul@tremblay.example")
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        send_due(cabinet)
        clock.advance(minutes=11)
        send_due(cabinet)  # the invitations are given up on; the company admin's two notices are queued
        clock.advance(minutes=11)
        send_due(cabinet)  # and given up on in turn
        assert env.sql("SELECT kind, state FROM outbox ORDER BY id") == [
            ("invitation", "failed"), ("invitation", "failed"), ("invitation_bounced", "failed"),
            ("invitation_bounced", "failed")]
        assert cabinet.worker.stats.attempts["failed"] == 4
        failed = json.loads(cli("mail", "list", "--state", "failed", "--json").output)
        assert [m["id"] for m in failed] == [1, 2, 3, 4] and all("relay unreachable" in m["last_answer"] for m in failed)
        # Nothing to do without saying what; a wrong id is a clear error and changes nothing.
        assert "--failed" in cli("mail", "retry", expect=1).output
        assert "no message 99" in cli("mail", "retry", "99", expect=3).output
        relay.start()
        # An invitation given up on was marked bounced and its inviter told: never sent after all.
        assert "email 1 is an invitation that was marked bounced" in cli("mail", "retry", "1", expect=1).output
        assert "Queued 1 email again: 3." in cli("mail", "retry", "3").output
        assert send_due(cabinet) == 1
        assert "Queued 1 email again: 4." in cli("mail", "retry", "--failed").output
        assert "Queued 0 emails again." in cli("mail", "retry", "--failed").output
        assert send_due(cabinet) == 1
        assert "email 4 is sent; only a failed or queued email can be retried" in cli(
            "mail", "retry", "4", expect=1).output
    finally:
        cabinet.close()
    assert env.sql("SELECT state FROM outbox ORDER BY id") == [("failed",), ("failed",), ("sent",), ("sent",)]
    assert sorted(relay.message_ids()) == sorted(r[0] for r in env.sql("SELECT message_id FROM outbox WHERE state = 'sent'"))


def test_mail_retry_sends_a_deferred_email_now_and_never_a_bounced_one(
    env: Env, cli: Cli, cabinet: Cabinet, relay: Relay
) -> None:
    relay.script["RCPT"] = ["451 4.7.1 Greylisted", "550 5.1.1 User unknown"]
    invite(cli)
    invite(cli, "paul@tremblay.example")
    assert send_due(cabinet) == 1  # the bounce notice to the inviter
    assert env.sql("SELECT state FROM outbox ORDER BY id") == [("pending",), ("bounced",), ("sent",)]
    assert send_due(cabinet) == 0  # the deferred email waits for its backoff
    assert "Queued 1 email again: 1." in cli("mail", "retry", "1").output
    assert send_due(cabinet) == 1  # due now, not in a minute
    assert "email 2 is bounced" in cli("mail", "retry", "2", expect=1).output
    assert env.sql("SELECT state FROM outbox ORDER BY id") == [("sent",), ("bounced",), ("sent",)]
    assert Counter(relay.message_ids()) == Counter(r[0] for r in env.sql("SELECT message_id FROM outbox WHERE state = 'sent'"))


def test_mail_list_and_show_read_the_outbox_with_an_smtp_relay(
    env: Env, cli: Cli, cabinet: Cabinet, relay: Relay
) -> None:
    relay.script["RCPT"] = ["550 5.1.1 User unknown"]
    invite(cli)
    send_due(cabinet)
    listed = cli("mail", "list").output
    assert "bounced" in listed and "550 5.1.1 User unknown" in listed and "sent" in listed
    first, second = json.loads(cli("mail", "list", "--json").output)
    assert (first["state"], first["attempts"], first["last_answer"]) == ("bounced", 1, "550 5.1.1 User unknown")
    assert first["to"] == "marie@tremblay.example" and second["state"] == "sent"
    assert [m["id"] for m in json.loads(cli("mail", "list", "--to", "julie@", "--json").output)] == [second["id"]]
    shown = cli("mail", "show", str(first["id"])).output
    assert "bounced, 1 attempt" in shown and "Last answer: 550 5.1.1 User unknown" in shown
    assert "Accept invitation" in shown and "/invitations/" in shown  # the body, from the outbox
    assert "there is no local Maildir" in cli("mail", "list", "--maildir", expect=78).output


def test_two_workers_and_a_relay_slower_than_the_lease_deliver_each_email_once(
    tmp_path: Path, relay: Relay
) -> None:
    # Each send takes longer than the lease: only a lease renewed while sending keeps the other off.
    env = relay_env(tmp_path, relay, "claim_lease = 2.0\n")
    cli = make_cli(env)
    relay.delay = 3.0
    for n in range(4):
        invite(cli, f"staff{n}@tremblay.example")
    first, second = (build(load_config(env.config_path)) for _ in range(2))
    sent = send_due_at_once(first, second)
    queued = [r[0] for r in env.sql("SELECT message_id FROM outbox")]
    assert Counter(relay.message_ids()) == Counter(queued)  # each Message-ID exactly once
    assert sum(sent) == 4 and all(sent)  # both took part
    assert env.sql("SELECT DISTINCT state, attempts FROM outbox") == [("sent", 1)]
    assert env.sql("SELECT count(*) FROM outbox WHERE claim_token IS NOT NULL OR claimed_until IS NOT NULL") == [(0,)]


def test_a_result_is_recorded_only_by_the_claims_owner(env: Env, cli: Cli, cabinet: Cabinet, relay: Relay) -> None:
    invite(cli)
    claim = cabinet.worker._claim()
    assert claim is not None
    # The lease ran out and another worker claimed the email: the first one's answer is not recorded.
    with cabinet.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE outbox SET claim_token = 'someone-else'")
    assert cabinet.worker._record_sent(claim, "250 OK") is False
    assert cabinet.worker._renew(claim) is False
    assert env.sql("SELECT state, attempts, claim_token FROM outbox") == [("pending", 0, "someone-else")]


def test_sigterm_waits_for_the_send_in_flight_and_metrics_count_attempts(
    env: Env, cli: Cli, relay: Relay, clock: FakeClock
) -> None:
    service = Service(build(load_config(env.config_path), clock=clock))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(service.start(), loop).result(30)
        relay.script["DATA"] = ["451 4.3.0 try again"]
        invite(cli)
        service.cabinet.worker.wake()
        wait_for(lambda: env.sql("SELECT last_answer FROM outbox")[0][0] is not None, "the first attempt")
        clock.advance(minutes=1)
        wait_for(lambda: env.sql("SELECT state FROM outbox") == [("sent",)], "the retry")
        metrics = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=30).text
        assert 'cabinet_outbox_attempts_total{outcome="deferred"} 1.0' in metrics
        assert 'cabinet_outbox_attempts_total{outcome="sent"} 1.0' in metrics
        assert "cabinet_outbox_retries_total 1.0" in metrics
        # A relay slower than the old 4-second stop: the send in flight still completes and is recorded.
        relay.delay = 6.0
        relay.in_data.clear()
        invite(cli, "paul@tremblay.example")
        service.cabinet.worker.wake()
        assert relay.in_data.wait(60)
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        service.cabinet.close()
    assert env.sql("SELECT recipient, state FROM outbox ORDER BY id") == [
        ("marie@tremblay.example", "sent"), ("paul@tremblay.example", "sent")]
    assert len(relay.received) == 2


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("key", ["relay_timeout", "give_up_after", "claim_lease"])
def test_outbox_timings_must_be_positive(tmp_path: Path, relay: Relay, key: str) -> None:
    env = relay_env(tmp_path, relay, f"{key} = 0\n")
    assert CliRunner().invoke(cabinet_cli, ["--config", str(env.config_path), "init"]).exit_code == 0
    result = CliRunner().invoke(cabinet_cli, ["--config", str(env.config_path), "mail", "flush"])
    assert result.exit_code == 78 and f"[mail] {key} must be a number of seconds above 0" in result.output
