"""SIGKILL during a stream of deliveries: every message that got 250 is processed exactly once."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from email.utils import parseaddr

from tests.conftest import Cli, Env, Mailbox, Seed
from tests.inbound_helpers import deliver, reply, wait_processed
from tests.test_serve import wait_until_up


def start(env: Env) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "--config", str(env.config_path), "serve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    wait_until_up(f"{env.base_url}/healthz", process)
    return process


def test_sigkill_mid_stream_loses_no_acknowledged_message_and_doubles_none(env: Env, cli: Cli, seed: Seed, mailbox: Mailbox, capsys):
    daemon = start(env)
    try:
        cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
        invitation = mailbox.wait(seed.accountant, subject="Invitation")[0]
        reply_to = parseaddr(str(invitation["Reply-To"]))[1]

        acknowledged: list[str] = []
        refused: list[str] = []
        stop = threading.Event()

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
                    time.sleep(0.02)

        sender = threading.Thread(target=stream)
        sender.start()
        while len(acknowledged) < 40:
            time.sleep(0.01)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        killed_after = len(acknowledged)
        time.sleep(0.3)
        stop.set()
        sender.join(30)
        daemon = start(env)
        rows = wait_processed(env, len(acknowledged), timeout=60)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)

    stored = env.sql("SELECT message_id, state FROM inbound")
    by_id: dict[str, list[str]] = {}
    for message_id, state in stored:
        by_id.setdefault(message_id, []).append(state)
    lost = [m for m in acknowledged if m not in by_id]
    doubled = [m for m, states in by_id.items() if len(states) != 1]
    unprocessed = [m for m, states in by_id.items() if states != ["processed"]]
    forwards = env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'")[0][0]
    recorded = env.sql("SELECT count(*) FROM events WHERE kind = 'reply.received'")[0][0]
    figures = (
        f"\nSIGKILL after {killed_after} acknowledged deliveries; {len(acknowledged)} acknowledged in all, "
        f"{len(refused)} refused while down, {len(stored)} stored, "
        f"{sum(s == ['processed'] for s in by_id.values())} processed, {forwards} forwarded, "
        f"lost {len(lost)}, doubled {len(doubled)}"
    )
    with capsys.disabled():  # the figures belong in the CI log
        print(figures)
    assert not lost and not doubled and not unprocessed
    # Exactly one effect per stored message: one recorded reply and one forward each.
    assert forwards == recorded == len(stored)
    assert len(rows) == len(stored)
