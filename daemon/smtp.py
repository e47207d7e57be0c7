"""The inbound SMTP/LMTP adapter (aiosmtpd).

It does almost nothing, on purpose: refuse what is not ours at RCPT (550,
never accept-then-bounce), enforce the limits, store the message, answer.
A message is committed to the database before the 250 (or, over LMTP, the
per-recipient 250s); if storing fails the answer is 451 and the sending MTA
retries. Understanding the message happens later, in ``daemon.inbound``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session as SmtpSession

from daemon.config import InboundConfig
from daemon.inbound import Inbound

log = logging.getLogger(__name__)


class InboundHandler:
    def __init__(self, inbound: Inbound, config: InboundConfig, on_stored: Callable[[], None]) -> None:
        self._inbound = inbound
        self._config = config
        self._on_stored = on_stored

    async def handle_RCPT(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self._config.max_recipients:
            return "452 4.5.3 Too many recipients; send the rest in another transaction"
        if not self._inbound.accepts(address):
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        recipients = list(envelope.rcpt_tos)
        try:
            stored = await asyncio.to_thread(self._inbound.store, envelope.mail_from or "", recipients, raw)
        except Exception:
            log.exception("could not store an inbound message; the sender will retry")
            status = "451 4.3.0 Temporary failure, please retry"
        else:
            log.info("stored inbound message %s (%d bytes, %d recipients)", stored, len(raw), len(recipients))
            self._on_stored()
            status = "250 2.0.0 Message accepted"
        if isinstance(server, LMTP):
            # LMTP answers once per recipient: the message is stored once for all of them.
            return "\r\n".join([status] * len(recipients))
        return status


class ConnectionLimit:
    """Counts open connections; shared by the listener's protocol instances."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open = 0


def make_protocol_factory(handler: InboundHandler, config: InboundConfig, hostname: str) -> Callable[[], SMTP]:
    base: type[SMTP] = LMTP if config.protocol == "lmtp" else SMTP
    limit = ConnectionLimit(config.max_connections)

    class Listener(base):  # type: ignore[valid-type, misc]
        line_length_limit = config.max_line_length
        _counted = False

        def connection_made(self, transport: Any) -> None:
            if limit.open >= limit.maximum:
                transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
                transport.close()
                return
            limit.open += 1
            self._counted = True
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if not self._counted:
                return
            limit.open -= 1
            super().connection_lost(error)

    def factory() -> SMTP:
        return Listener(
            handler,
            hostname=hostname,
            ident="Cabinet",
            data_size_limit=config.max_message_size,
            timeout=config.timeout,
        )

    return factory
