"""The inbound SMTP adapter (aiosmtpd).

It accepts mail only for Cabinet's own addresses (``reply+…@domain`` and
``bounce+…@domain``) and refuses everything else at RCPT with 550, so it
never accepts and then bounces (backscatter). An accepted message is stored
in the database before the 250 reply; any failure to store answers 451 so
the sending MTA retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session as SmtpSession
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import write_transaction
from daemon.models import InboundMessage

log = logging.getLogger(__name__)

OUR_PREFIXES = ("reply+", "bounce+")


class InboundHandler:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, domain: str) -> None:
        self._sessions = sessions
        self._clock = clock
        self._domain = domain.lower()

    def is_ours(self, address: str) -> bool:
        local, _, domain = address.lower().rpartition("@")
        return domain == self._domain and local.startswith(OUR_PREFIXES) and len(local) > len("bounce+")

    async def handle_RCPT(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.is_ours(address):
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _store(self, mail_from: str, recipients: list[str], raw: bytes) -> int:
        with write_transaction(self._sessions) as s:
            row = InboundMessage(
                received_at=self._clock.now(),
                mail_from=mail_from,
                recipients=json.dumps(recipients),
                raw=raw,
                state="received",
            )
            s.add(row)
            s.flush()
            return row.id

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            stored = await asyncio.to_thread(self._store, envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        except Exception:
            log.exception("could not store an inbound message; asking the sender to retry")
            return "451 4.3.0 Temporary failure, please retry"
        log.info("stored inbound message %s (%d bytes)", stored, len(raw))
        return "250 2.0.0 Message accepted"


def smtp_factory(handler: InboundHandler, hostname: str, **kwargs: Any) -> SMTP:
    return SMTP(handler, hostname=hostname, ident="Cabinet", **kwargs)
