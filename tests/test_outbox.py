"""The outbox worker sending through the real SMTP transport to an aiosmtpd sink on loopback.

The sink stands in for the firm's outbound relay (a remote MTA we cannot run
here); everything on Cabinet's side is real.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from email import message_from_bytes
from pathlib import Path
from typing import Any, Callable

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner, Result
from aiosmtpd.smtp import Envelope, Session, SMTP
from sqlalchemy import event, text

from daemon.app import build
from daemon.cli import cli as cabinet_cli
from daemon.config import load_config
from daemon.db import engine_of, write_transaction, writes_waiting
from mailer.outbox import backoff, jittered
from mailer.transports import TransportError
from tests.conftest import Cli, Env, FakeClock, free_port, write_config
from tests.test_group_commit import wait_for


def command(env: Env, *args: str, input: str | None = None, expect: int = 0) -> Result:
    """A `cabinet` command on ``env``'s configuration, which must exit with ``expect``."""
    result = CliRunner().invoke(cabinet_cli, ["--config", str(env.config_path), *args], input=input)
    assert result.exit_code == expect, result.output
    return result


def one_invitation(env: Env) -> None:
    """The database made, a company, and one invitation queued to send."""
    for args in (["init"], ["company", "add", "Roy", "--admin-email", "julie@roy.example"],
                 ["invitation", "send", "--company", "Roy", "--email", "m@t.example"]):
        command(env, *args)


class Sink:
    """Collects what the relay receives; can refuse for a while with 451."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []
        self.peers: list[object] = []  # the client end of the connection each email came over
        self.refuse = False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return "451 4.3.0 try again later"
        self.received.append(envelope)
        self.peers.append(session.peer)
        return "250 OK"


@pytest.fixture
def relay() -> tuple[Sink, int]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


@pytest.fixture
def smtp_env(tmp_path: Path, relay) -> Env:
    _, port = relay
    return write_config(
        tmp_path, f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {port}\nrelay_tls = "none"\n'
    )


@pytest.fixture
def smtp_cli(smtp_env: Env) -> Cli:
    def run(*args: str, input: str | None = None, expect: int = 0) -> Result:
        return command(smtp_env, *args, input=input, expect=expect)

    run("init")
    run("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    run("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example")
    return run


def test_queued_mail_reaches_the_relay_once_with_its_message_id(smtp_env: Env, smtp_cli: Cli, relay) -> None:
    sink, _ = relay
    smtp_cli("invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
    (queued_id,) = [row[0] for row in smtp_env.sql("SELECT message_id FROM outbox")]
    cabinet = build(load_config(smtp_env.config_path))
    try:
        assert asyncio.run(cabinet.worker.send_due()) == 1
        assert asyncio.run(cabinet.worker.send_due()) == 0  # nothing is sent twice
    finally:
        cabinet.close()
    (envelope,) = sink.received
    assert envelope.rcpt_tos == ["marie@tremblay.example"]
    message = message_from_bytes(envelope.original_content)
    assert message["Message-ID"] == queued_id
    assert message.is_multipart()
    assert smtp_env.sql("SELECT state, attempts FROM outbox") == [("sent", 1)]


def test_a_refusing_relay_is_retried_with_backoff_and_the_same_message_id(smtp_env: Env, smtp_cli: Cli, relay) -> None:
    sink, _ = relay
    sink.refuse = True
    smtp_cli("invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
    clock = FakeClock()
    cabinet = build(load_config(smtp_env.config_path), clock=clock)
    try:
        assert asyncio.run(cabinet.worker.send_due()) == 0
        state, attempts, error = smtp_env.sql("SELECT state, attempts, last_error FROM outbox")[0]
        assert (state, attempts) == ("pending", 1) and "451" in error
        # Not due again before the backoff has passed.
        sink.refuse = False
        assert asyncio.run(cabinet.worker.send_due()) == 0
        clock.advance(seconds=backoff(1).total_seconds() + 1)
        assert asyncio.run(cabinet.worker.send_due()) == 1
    finally:
        cabinet.close()
    assert len(sink.received) == 1
    assert smtp_env.sql("SELECT state, attempts FROM outbox") == [("sent", 2)]


def test_an_unreachable_relay_loses_nothing(tmp_path: Path) -> None:
    # Retried for an hour (the queue lifetime), then failed: kept, visible and requeueable.
    env = write_config(tmp_path, f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {free_port()}\nrelay_tls = "none"\ngive_up_after = 3600\n')
    one_invitation(env)
    clock = FakeClock()
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        asyncio.run(cabinet.worker.send_due())
        clock.advance(hours=2)
        asyncio.run(cabinet.worker.send_due())
    finally:
        cabinet.close()
    (state, attempts, error), = env.sql("SELECT state, attempts, last_error FROM outbox WHERE kind = 'invitation'")
    assert (state, attempts) == ("failed", 2) and "unreachable" in error
    # Its inviter is told, as for a bounce (the notice waits for the relay too).
    assert env.sql("SELECT kind, state FROM outbox WHERE kind != 'invitation'") == [("invitation_bounced", "pending")]


def test_the_retry_budget_is_a_time_not_a_count(tmp_path: Path) -> None:
    env = write_config(tmp_path, f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {free_port()}\nrelay_tls = "none"\n')
    one_invitation(env)
    clock = FakeClock()
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        # A relay down for a day: retried all day long (far past the old 8 attempts), still queued.
        for _ in range(40):
            asyncio.run(cabinet.worker.send_due())
            clock.advance(hours=1)
        assert env.sql("SELECT state, attempts FROM outbox") == [("pending", 40)]
        # Past the default budget (5 days since it was queued), it is given up on.
        clock.advance(days=5)
        asyncio.run(cabinet.worker.send_due())
    finally:
        cabinet.close()
    assert env.sql("SELECT state, attempts FROM outbox WHERE kind = 'invitation'") == [("failed", 41)]


def test_backoff_grows_and_is_capped_and_jitter_spreads_it() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert backoff(30).total_seconds() == 3600
    rng = random.Random(7)
    delays = {jittered(backoff(3), rng).total_seconds() for _ in range(20)}
    assert all(60 <= d <= 120 for d in delays) and len(delays) > 1


def test_rendered_by_the_worker_once_and_resent_byte_identical(tmp_path: Path, relay) -> None:
    # The state change stores what to render; the first attempt renders and keeps the bytes, so a
    # resend is the same email even after an operator changed the template in between.
    sink, port = relay
    env = write_config(tmp_path, f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {port}\n'
                                 'relay_tls = "none"\n\n[templates]\ndir = "overrides"\n')
    override = tmp_path / "overrides" / "email" / "en"
    override.mkdir(parents=True)
    one_invitation(env)
    ((raw, content),) = env.sql("SELECT raw, content FROM outbox")
    assert raw is None and '"template":"invitation"' in content
    shown = command(env, "mail", "show", "1")
    assert "Message-ID" in shown.output, shown.output
    sink.refuse = True
    clock = FakeClock()
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        assert asyncio.run(cabinet.worker.send_due()) == 0
    finally:
        cabinet.close()
    ((first, content),) = env.sql("SELECT raw, content FROM outbox")
    assert first is not None and b"Message-ID" in bytes(first)
    assert content is None  # the bytes are kept: what they were rendered from is not (it was WAL for nothing)
    (override / "invitation.subject").write_text("A different subject\n")
    sink.refuse = False
    clock.advance(seconds=backoff(1).total_seconds() + 1)
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        assert asyncio.run(cabinet.worker.send_due()) == 1
    finally:
        cabinet.close()
    (envelope,) = sink.received
    assert envelope.original_content.replace(b"\r\n", b"\n") == bytes(first).replace(b"\r\n", b"\n")
    assert b"A different subject" not in envelope.original_content
    shown = command(env, "mail", "show", "1", "--raw")
    assert shown.output.rstrip("\n") == bytes(first).decode().rstrip("\n")


def test_an_email_sent_at_its_first_attempt_keeps_its_bytes_not_what_they_were_rendered_from(
        tmp_path: Path, relay) -> None:
    """The batched "sent" mark (``_record_sent_many``) stores the bytes and clears ``content``; the
    operator's `mail show --raw` shows the bytes sent."""
    sink, port = relay
    env = write_config(tmp_path, f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {port}\n'
                                 'relay_tls = "none"\n')
    one_invitation(env)
    cabinet = build(load_config(env.config_path), clock=FakeClock())
    try:
        assert asyncio.run(cabinet.worker.send_due()) == 1
    finally:
        cabinet.close()
    ((state, raw, content),) = env.sql("SELECT state, raw, content FROM outbox")
    assert (state, content) == ("sent", None)
    (envelope,) = sink.received
    assert envelope.original_content.replace(b"\r\n", b"\n") == bytes(raw).replace(b"\r\n", b"\n")
    shown = command(env, "mail", "show", "1", "--raw")
    assert shown.output.rstrip("\n") == bytes(raw).decode().rstrip("\n")


def test_relay_connections_are_kept_open_and_replaced_when_the_relay_drops_them(tmp_path: Path) -> None:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    env = write_config(tmp_path, f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {port}\n'
                                 'relay_tls = "none"\nrelay_connections = 2\n')
    command(env, "init")
    for i in range(6):
        command(env, "company", "add", f"Company {i}", "--admin-email", f"admin{i}@c{i}.example")
        command(env, "invitation", "send", "--company", f"Company {i}", "--email", f"staff{i}@firm.example")
    cabinet = build(load_config(env.config_path))
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(cabinet.worker.send_due()) == 6
        assert len(sink.received) == 6 and 1 <= len(set(sink.peers)) <= 2  # six emails, at most two connections
        # The relay restarts: the kept connections are dead; the next emails go over new ones.
        controller.stop()
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()
        command(env, "company", "add", "Company 6", "--admin-email", "admin6@c6.example")
        command(env, "invitation", "send", "--company", "Company 6", "--email", "staff6@firm.example")
        assert loop.run_until_complete(cabinet.worker.send_due()) == 1
        loop.run_until_complete(cabinet.worker.flush())
    finally:
        loop.close()
        cabinet.close()
        controller.stop()
    assert len(sink.received) == 7
    assert env.sql("SELECT count(*) FROM outbox WHERE state = 'sent' AND attempts = 1") == [(7,)]



WORKER_WRITES: dict[str, Callable[[Any, Any], object]] = {
    "claim": lambda worker, claim: worker._claim_batch(10),
    "sent": lambda worker, claim: worker._record_sent_many([(claim, "250 OK", None)]),
    "failure": lambda worker, claim: worker._record_failure(claim, TransportError("451 try again later")),
}


@pytest.mark.skipif("CABINET_TEST_DATABASE_URL" in os.environ, reason="SQLite's one writer (GroupWriter)")
@pytest.mark.parametrize("write", list(WORKER_WRITES))
def test_the_workers_writes_wait_behind_a_queued_foreground_write(env: Env, cli: Cli, write: str) -> None:
    """The worker's claims, "sent" marks and failures are background units: none takes SQLite's one
    writer ahead of a foreground write (an accept, a click) already queued for it; each waits on the
    writer's queue, not beside that write on the lock, and runs once the write has."""
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example")
    cli("invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
    cabinet = build(load_config(env.config_path))
    sessions, worker = cabinet.sessions, cabinet.worker
    writer = sessions.writer  # type: ignore[attr-defined]
    writer.max_give_way = None  # gives way for as long as the test takes (a busy machine may take seconds)
    order: list[str] = []
    watching = threading.Event()

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if watching.is_set() and statement.startswith("UPDATE outbox"):
            order.append(write)

    event.listen(engine_of(sessions), "before_cursor_execute", on_statement)
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with write_transaction(sessions) as s:
            s.execute(text("SELECT 1"))
            holding.set()
            release.wait()

    def store() -> None:
        with write_transaction(sessions) as s:
            s.execute(text("SELECT 1"))
            order.append("store")

    done: list[object] = []
    try:
        claim = None if write == "claim" else worker._claim_batch(10)[0]
        watching.set()
        threads = [threading.Thread(target=holder)]
        threads[0].start()
        holding.wait()
        threads.append(threading.Thread(target=store))
        threads[-1].start()
        wait_for(lambda: writes_waiting(sessions), "the store to queue")
        threads.append(threading.Thread(target=lambda: done.append(WORKER_WRITES[write](worker, claim))))
        threads[-1].start()
        # Queued one way or the other: on the writer's queue (background), or on the lock (foreground).
        wait_for(lambda: len(writer._queue._waiters) == 1 or writer._waiting == 2, f"the {write} to queue")
        assert len(writer._queue._waiters) == 1 and writer._waiting == 1  # it waits its turn
        release.set()
        for thread in threads:
            thread.join()
    finally:
        release.set()
        cabinet.close()
    assert order == ["store", write]
    assert len(done) == 1
    assert env.sql("SELECT state, claim_token IS NULL FROM outbox") == [
        {"claim": ("pending", False), "sent": ("sent", True), "failure": ("pending", True)}[write]]
