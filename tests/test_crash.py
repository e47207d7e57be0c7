"""SIGKILL during a stream of deliveries: every message that got 250 is processed exactly once."""

from __future__ import annotations

import smtplib
import threading
import time
from email.utils import parseaddr
from typing import Callable

import pytest

from tests.conftest import Cli, Env, Mailbox, Seed, ServeProcess, wait_until
from tests.inbound_helpers import deliver, reply, wait_processed

pytestmark = pytest.mark.slow


def test_sigkill_mid_stream_loses_no_acknowledged_message_and_doubles_none(
    env: Env, cli: Cli, seed: Seed, mailbox: Mailbox, figures: Callable[[str], None],
):
    daemon = ServeProcess(env).start()
    sender: threading.Thread | None = None
    stop = threading.Event()
    try:
        cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
        invitation = mailbox.wait(seed.accountant, subject="Invitation")[0]
        reply_to = parseaddr(str(invitation["Reply-To"]))[1]

        acknowledged: list[str] = []
        refused: list[str] = []

        def stream() -> None:
            for n in range(400):
                if stop.is_set():
                    return
                message = reply(reply_to, seed.accountant, f"Note {n}: see the attached figures.", authenticated=False)
                try:
                    deliver(env, seed.accountant, [reply_to], message)
                    acknowledged.append(str(message["Message-ID"]))
                except (OSError, smtplib.SMTPException):
                    refused.append(str(message["Message-ID"]))
                    time.sleep(0.02)  # pacing the retries while the daemon is down, not a wait

        sender = threading.Thread(target=stream)
        sender.start()
        wait_until(lambda: len(acknowledged) >= 40 or not sender.is_alive(), what="40 acknowledged deliveries",
                   detail=daemon.tail)
        assert len(acknowledged) >= 40, f"the stream ended early: {len(refused)} refused\n{daemon.tail()}"
        daemon.kill()
        killed_after = len(acknowledged)
        # Deliveries keep coming while it is down: at least one is refused (or the stream has ended).
        wait_until(lambda: refused or not sender.is_alive(), what="a delivery refused while the daemon is down")
        stop.set()
        sender.join(60)
        daemon.start()
        rows = wait_processed(env, len(acknowledged), timeout=120)
    finally:
        stop.set()
        if sender is not None:
            sender.join(60)
        daemon.stop()

    stored = env.sql("SELECT message_id, state FROM inbound")
    by_id: dict[str, list[str]] = {}
    for message_id, state in stored:
        by_id.setdefault(message_id, []).append(state)
    lost = [m for m in acknowledged if m not in by_id]
    doubled = [m for m, states in by_id.items() if len(states) != 1]
    unprocessed = [m for m, states in by_id.items() if states != ["processed"]]
    forwards = env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'")[0][0]
    recorded = env.sql("SELECT count(*) FROM events WHERE kind = 'reply.received'")[0][0]
    figures(
        f"SIGKILL after {killed_after} acknowledged deliveries; {len(acknowledged)} acknowledged in all, "
        f"{len(refused)} refused while down, {len(stored)} stored, "
        f"{sum(s == ['processed'] for s in by_id.values())} processed, {forwards} forwarded, "
        f"lost {len(lost)}, doubled {len(doubled)}"
    )
    assert not lost and not doubled and not unprocessed
    # Exactly one effect per stored message: one recorded reply and one forward each.
    assert forwards == recorded == len(stored)
    assert len(rows) == len(stored)
