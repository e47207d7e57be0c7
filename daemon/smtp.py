"""The inbound SMTP/LMTP adapter (aiosmtpd).

It does almost nothing, on purpose: refuse what is not ours at RCPT (550,
never accept-then-bounce), enforce the limits, store the message, answer.
A message is committed to the database before the 250 (or, over LMTP, the
per-recipient 250s); if storing fails the answer is 451 and the sending MTA
retries. Messages whose DATA ends while a store is being written are stored
together in the next one (one thread hop and one transaction), each with its
own answer. Understanding the message happens later, in ``daemon.inbound``, and gives way
to deliveries (``Arrivals``): while messages keep arriving, processing waits for
a lull (a bounded wait), so that the listener has the core and the writer.

Every limit answers with a status code and words a sending MTA (or the person
reading its bounce) understands, then closes the connection if it must:
connections at once (``max_connections``), connections from one client
address (``max_connections_per_ip``), and commands without a message
(``max_idle_commands``) so that clients sending NOOP every few seconds cannot
hold every slot while real mail waits. The greeting names no software version.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session as SmtpSession

from daemon.arrivals import Arrivals
from daemon.config import Config, InboundConfig
from daemon.inbound import Inbound
from mailer.recorder import BatchRecorder

log = logging.getLogger(__name__)

# The greeting's words after the host name: no library or Python version for scanners to match.
IDENT = "Cabinet ESMTP"
TOO_MANY = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address"
TOO_IDLE = "421 4.7.0 Too many commands without a message; closing the connection"
# Commands that move a transaction forward; every other one counts towards max_idle_commands.
TRANSACTION = frozenset({"RCPT", "DATA", "QUIT"})

Command = Callable[[str | None], Awaitable[None]]

# MAIL FROM / RCPT TO as nearly every MTA writes them: "<dot-atom@dot-atom>" then nothing, or a space
# and the ESMTP parameters. For these the standard library's address parser (which aiosmtpd calls,
# defining a typing.Protocol class on every call) gives exactly the address and the parameters
# matched here; every other form (a quoted local part, a domain literal, a route, comments, <>) is
# still read by it.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>(?:[ ]+([^\s(][^\r\n]*))?")


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of a "<local@domain> PARAMS" argument in its plain form, or None when the
    standard library's parser must read it."""
    match = _PLAIN_PATH.fullmatch(arg)
    if match is None:
        return None
    return match[1], match[2] or ""


Stored = tuple[str, list[str], bytes]


class InboundHandler:
    def __init__(
        self, inbound: Inbound, config: InboundConfig, on_stored: Callable[[], None], arrivals: Arrivals | None = None
    ) -> None:
        self._inbound = inbound
        self._config = config
        self._on_stored = on_stored
        self._arrivals = arrivals or Arrivals()
        # Concurrent DATAs are stored together: one thread hop and one transaction for all of them.
        self._store: BatchRecorder[Stored, int | Exception] = BatchRecorder(inbound.store_many, size=64, max_age=0)

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
        self._arrivals.arrived()
        try:
            stored = await self._store.add((envelope.mail_from or "", recipients, raw))
            if isinstance(stored, Exception):
                raise stored
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

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's own answer would quote the exception's text to the client.
        log.error("inbound SMTP command failed", exc_info=error)
        return "451 4.3.0 Local error, please try again later"


@dataclass
class ConnectionLimit:
    """Open connections, in all and per client address; shared by the listener's protocol instances."""

    maximum: int
    per_address: int
    open: int = 0
    by_address: Counter[str] = field(default_factory=Counter)

    def refusal(self, address: str) -> str | None:
        """The 421 a new connection from ``address`` gets, or None when it may open (and is counted)."""
        if self.open >= self.maximum:
            return TOO_MANY
        if self.by_address[address] >= self.per_address:
            return TOO_MANY_FROM_YOU
        self.open += 1
        self.by_address[address] += 1
        return None

    def closed(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


def _client_address(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else str(peer or "")


def make_protocol_factory(handler: InboundHandler, config: Config) -> Callable[[], SMTP]:
    inbound = config.inbound
    base: type[SMTP] = LMTP if inbound.protocol == "lmtp" else SMTP
    limit = ConnectionLimit(inbound.max_connections, config.value("inbound", "max_connections_per_ip"))
    max_idle = int(config.value("inbound", "max_idle_commands"))

    # mypy takes no variable (``base``: SMTP or LMTP, from the config) as a base class.
    class Listener(base):  # type: ignore[valid-type, misc]
        line_length_limit = inbound.max_line_length
        _address: str | None = None  # set once counted (STARTTLS calls connection_made again)
        _idle = 0  # commands since the last message, accepted RCPT and DATA aside

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # aiosmtpd dispatches through this table (built from the smtp_* methods, LHLO included):
            # wrapping it counts every command, whatever the protocol.
            self._smtp_methods: dict[str, Command] = {
                name: self._counted(name, method) for name, method in self._smtp_methods.items()}

        def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
            plain = plain_path(arg)
            if plain is None:
                return super()._getaddr(arg)
            address, rest = plain
            if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
                return None, None  # as aiosmtpd's own check
            return address, rest

        def connection_made(self, transport: Any) -> None:
            if self._address is None:
                address = _client_address(transport)
                refusal = limit.refusal(address)
                if refusal is not None:
                    log.warning("inbound connection from %s refused: %s", address, refusal)
                    transport.write(refusal.encode("ascii") + b"\r\n")
                    transport.close()
                    return
                self._address = address
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if self._address is None:
                return
            limit.closed(self._address)
            super().connection_lost(error)

        def _counted(self, command: str, method: Command) -> Command:
            async def run(arg: str | None) -> None:
                if command not in TRANSACTION:
                    self._idle += 1
                if self._idle > max_idle:
                    log.warning("inbound connection from %s closed after %d commands without a message",
                                self._address, max_idle)
                    await self.push(TOO_IDLE)
                    self.transport.close()
                    return
                envelope = self.envelope
                recipients = len(envelope.rcpt_tos) if envelope is not None else 0
                await method(arg)
                if command == "DATA" and self.envelope is not envelope:
                    self._idle = 0  # a message went through (stored, or refused with its reason)
                elif command in ("RCPT", "DATA") and envelope is not None and self.envelope is envelope \
                        and len(envelope.rcpt_tos) == recipients:
                    self._idle += 1  # refused: no further on the way to a message
            return run

    def factory() -> SMTP:
        return Listener(
            handler,
            hostname=config.smtp.domain,
            ident=IDENT,
            data_size_limit=inbound.max_message_size,
            timeout=inbound.timeout,
        )

    return factory
