"""The inbound bench's burst counts the messages answered 250, what its server CPU per message divides by
(bench/run.py ``_smtpload``, ``on_cpu``): a real SMTP load against a real aiosmtpd. No timings here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from bench import run
from bench.instance import free_port


class SomeRecipients:
    """Stores for ``ok@`` recipients only (550 at RCPT for the others, which the load then RSETs)."""

    def __init__(self) -> None:
        self.stored = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if not address.startswith("ok@"):
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stored += 1
        return "250 Message accepted"


def test_the_burst_counts_the_stored_messages_on_cpu_divides_by(tmp_path: Path) -> None:
    handler = SomeRecipients()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        jobs = [{"from": "a@example.com", "to": f"{'ok' if n % 3 else 'no'}@example.com",
                 "data": f"Subject: {n}\n\nhello {n}\n"} for n in range(30)]
        sample = run.on_cpu(os.getpid(), lambda r: run._smtpload(port, jobs, tmp_path, "burst"))(0)
    finally:
        controller.stop()
    assert handler.stored == 20
    assert sample.count == 20  # the 250s, not the refused ones
    assert sample.errors == 10
