"""Where outbound mail goes: a local Maildir (embedded default) or an SMTP relay.

``send`` returns the receiver's answer (the relay's reply, or the Maildir file
it wrote) so the outbox can show it; a failure raises ``TransportError`` saying
whether the receiver refused the email for good (a 5xx at MAIL, RCPT or DATA:
a bounce) or retrying can help (a 4xx, a dropped connection, a timeout).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import aiosmtplib

from daemon.config import RelayConfig
from mailer.maildir import deliver_many


class TransportError(Exception):
    """Sending failed; ``permanent`` says the receiver refused the email itself (retrying cannot help)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    @property
    def timeout(self) -> float:
        """The longest one ``send`` can take, all steps together."""
        ...

    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> str: ...

    async def close(self) -> None:
        """Release kept connections (at stop)."""
        ...


# One email to send: envelope sender, recipients, bytes.
Outgoing = tuple[str, list[str], bytes]


@runtime_checkable
class BatchTransport(Transport, Protocol):
    """A transport that takes several emails at once, each with its own answer or error (in order)."""

    async def send_batch(self, emails: Sequence[Outgoing], cut_short: Callable[[], bool] | None = None
                         ) -> list[str | TransportError]:
        """Each email's answer or error, in order. Once ``cut_short()`` is true (asked before each email but
        the first) the rest are not sent: the answers are then those of the emails before them."""
        ...


class MaildirTransport:
    """Delivers into a Maildir, as a local delivery agent would; several emails at once share one fsync of
    ``new/`` (``send_batch``)."""

    timeout = 30.0  # a local write; only a stuck disk takes this long

    def __init__(self, path: Path) -> None:
        self.path = path

    def _deliver(self, emails: Sequence[Outgoing], cut_short: Callable[[], bool] | None = None
                 ) -> list[str | TransportError]:
        # A delivery agent records the envelope sender as Return-Path. The outbox marks the rows
        # sent right after this returns, so ``deliver_many`` puts the files and their names on disk first.
        raws = [b"Return-Path: <" + envelope_from.encode() + b">\r\n" + raw for envelope_from, _, raw in emails]
        # A full or read-only disk: a failed attempt like a relay's 4xx, counted and retried.
        try:
            results = deliver_many(self.path, raws, cut_short)
        except OSError as exc:  # the folders could not be made: every email's failure
            results = [exc] * len(raws)
        return [f"maildir {result}" if isinstance(result, str)
                else TransportError(f"maildir delivery failed: {result.strerror or result}")
                for result in results]

    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> str:
        (result,) = await self.send_batch([(envelope_from, recipients, raw)])
        if isinstance(result, TransportError):
            raise result
        return result

    async def send_batch(self, emails: Sequence[Outgoing], cut_short: Callable[[], bool] | None = None
                         ) -> list[str | TransportError]:
        return await asyncio.to_thread(self._deliver, emails, cut_short)

    async def close(self) -> None:
        pass


def _answer(code: int, message: str) -> str:
    return " ".join(f"{code} {message}".split())


def _refusal(exc: Exception) -> TransportError:
    """The ``TransportError`` for what went wrong after the connection was up."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusal = exc.recipients[0]
        permanent = all(500 <= r.code < 600 for r in exc.recipients)
        return TransportError(_answer(refusal.code, refusal.message), permanent)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # SMTPSenderRefused (MAIL) and SMTPDataError (DATA) carry the relay's reply.
        return TransportError(_answer(exc.code, exc.message), 500 <= exc.code < 600)
    return TransportError(f"connection lost: {exc}")


class SmtpTransport:
    """Relays through an SMTP server (the firm's MTA) with aiosmtplib, over a few kept-open connections.

    Up to ``connections`` conversations run at once, each on a connection of its
    own that is kept open for the next email (an MTA's connection cache): a new
    TCP + EHLO (+ STARTTLS, AUTH) per email halved the rate. A connection that
    fails in any way is closed, never reused; a kept one the relay closed while
    idle is replaced before anything was sent on it. ``timeout`` bounds the whole
    conversation (connecting included), so a stop waits for a send at most that long.
    """

    def __init__(self, relay: RelayConfig, timeout: float = 30.0, connections: int = 2) -> None:
        self._relay = relay
        self.timeout = timeout
        self.connections = connections
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind_loop(self) -> asyncio.Semaphore:
        # Connections belong to the event loop that opened them (`cabinet mail flush` runs a new loop
        # each time): on another loop, forget them.
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            for client in self._idle:
                try:
                    client.close()
                except Exception:
                    pass
            self._idle = []
            self._slots = asyncio.Semaphore(self.connections)
            self._loop = loop
        return self._slots

    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> str:
        async with self._bind_loop():
            try:
                return await asyncio.wait_for(self._send(envelope_from, recipients, raw), self.timeout)
            except TimeoutError:
                raise TransportError(f"relay did not answer within {self.timeout:g} s") from None

    async def _connect(self) -> aiosmtplib.SMTP:
        relay = self._relay
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            use_tls=relay.tls == "tls",
            start_tls=True if relay.tls == "starttls" else False,
            username=relay.user or None,
            password=relay.password.reveal() or None,
            timeout=self.timeout,
        )
        try:
            # Connecting, EHLO, STARTTLS and AUTH say nothing about the recipient: any
            # failure there (even a 5xx such as a refused login) is the relay's, retried.
            await client.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransportError(f"relay unreachable: {exc}") from None
        return client

    async def _send(self, envelope_from: str, recipients: list[str], raw: bytes) -> str:
        client = self._idle.pop() if self._idle else None
        if client is not None and not client.is_connected:
            client = None
        reused = client is not None
        if client is None:
            client = await self._connect()
        try:
            errors, message = await client.sendmail(envelope_from, recipients, raw)
        except aiosmtplib.SMTPServerDisconnected:
            client.close()
            if not reused:
                raise _refusal(aiosmtplib.SMTPServerDisconnected("connection lost")) from None
            # The relay closed a kept connection while it was idle: nothing went over it; once more, fresh.
            client = await self._connect()
            try:
                errors, message = await client.sendmail(envelope_from, recipients, raw)
            except (aiosmtplib.SMTPException, OSError) as exc:
                client.close()
                raise _refusal(exc) from None
            except asyncio.CancelledError:
                client.close()
                raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()  # a failed conversation ends at once, without QUIT
            raise _refusal(exc) from None
        except asyncio.CancelledError:
            client.close()  # timed out, or the claim passed to another worker
            raise
        self._idle.append(client)  # kept open for the next email
        if errors:  # several recipients, some refused: Cabinet sends one recipient per email
            refusal = next(iter(errors.values()))
            raise TransportError(_answer(refusal.code, refusal.message), 500 <= refusal.code < 600)
        return _answer(250, message)

    async def close(self) -> None:
        """Say goodbye on every kept connection (at stop)."""
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                if self._loop is asyncio.get_running_loop():
                    await asyncio.wait_for(client.quit(), self.timeout)
                else:
                    client.close()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
