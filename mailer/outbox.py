"""The transactional outbox: queue emails with a state change, send them later.

``Outbox.queue`` renders and serialises a notice once and inserts it in the
caller's transaction, so an email exists if and only if its change committed.
``OutboxWorker`` sends what is due, one claimed email at a time per relay
connection, or several at once into the Maildir (``BatchTransport``); the
``Message-ID`` is fixed at queue time, so a resend after a crash is the same
message to every receiver. What the relay answers decides what happens next,
as an MTA's queue would: a 5xx is final (the email bounced), a 4xx or a lost
connection is retried with backoff and jitter until ``give_up_after`` has
passed since the email was queued.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from email.headerregistry import Address
from email.utils import parseaddr

from sqlalchemy import ColumnElement, Connection, and_, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import rows_changed, write_connection, write_transaction
from daemon.models import OutboxMessage
from daemon.prepared_write import PreparedWrite
from daemon.notices import Notice
from daemon.rawmail import storable
from daemon.tokens import LinkSigner, Purpose
from mailer.content import dump_content, load_content
from mailer.message import MessageIds, check_recipient, message_bytes
from mailer.recorder import BatchRecorder
from mailer.render import EmailRenderer
from mailer.transports import BatchTransport, Transport, TransportError

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)

# Whose words each email carries (a context key naming the firm, the company or a person); the rest are the
# product's own notices ("Cabinet").
SPEAKS_FOR = {
    "invitation": "company",
    "invitation_accepted": "firm",
    "invitation_declined": "accountant_name",
    "client_added": "company",
    "client_setup": "firm",
    "client_setup_completed": "company",
    "payment_details_request": "firm",
    "trial_reminder": "firm",
    "payment_details_added": "company",
    "discount_lapsed_client": "firm",
    "transfer_allowed": "company",
    "transfer_completed": "firm",
    "transfer_declined": "firm",
    "transfer_revoked": "company",
    "reply_forwarded": "sender",
}


_INSERT = insert(OutboxMessage.__table__)
# ``queue_prepared``'s insert, compiled once per engine and run on the write connection's cursor: the
# columns ``Outbox.prepare`` gives (every one with a Python default among them).
_PREPARED_COLUMNS = (
    "message_id", "ref", "kind", "envelope_from", "recipient", "subject", "raw", "content", "state", "attempts",
    "created_at", "queued_at", "next_attempt_at", "invitation_id", "company_id", "firm_id", "audience",
)
_PREPARED_INSERT = PreparedWrite(_INSERT, _PREPARED_COLUMNS)
# Rows of one multi-row INSERT on SQLite: 17 binds each, under 999 (SQLite's limit on a statement's binds
# before 3.32) for any build; an accept batch's emails (64 accepts at most, two emails each) in 3 statements.
SQLITE_ROWS = 999 // len(_PREPARED_COLUMNS)

# What a claim reads of its row: what sending it and composing it (``Outbox.compose``) need.
_CLAIMED = [OutboxMessage.__table__.c[name] for name in (
    "id", "envelope_from", "recipient", "attempts", "queued_at", "created_at", "next_attempt_at", "raw", "content",
    "ref", "invitation_id", "company_id", "message_id", "subject",
)]


class Outbox:
    """Implements ``daemon.notices.Notifier``."""

    def __init__(
        self, renderer: EmailRenderer, signer: LinkSigner, clock: Clock, from_address: str, domain: str,
        product_name: str = "Cabinet",
    ) -> None:
        self._renderer = renderer
        self._product = product_name
        self._signer = signer
        self._clock = clock
        self._from = from_address
        # Parsed once, at the first email (a bad address fails that email, as before, not the start):
        # every email's From is this address under the name of whom it speaks for.
        self._from_mailbox: Address | None = None
        self._domain = domain
        self._message_ids = MessageIds(domain)

    def address(self, purpose: Purpose, ref: str) -> str:
        """``reply+…@domain`` or ``bounce+…@domain`` for the email with reference ``ref``."""
        return f"{purpose.value}+{self._signer.sign_address(purpose, ref)}@{self._domain}"

    def _from_header(self, notice: Notice) -> str:
        """From: names who the email speaks for: "Tremblay CPA via Cabinet", "Boulangerie Roy via Cabinet"."""
        party = SPEAKS_FOR.get(notice.template)
        who = notice.context.get(party) if party else None
        name = f"{who} via {self._product}" if isinstance(who, str) and who and "@" not in who else self._product
        mailbox = self._from_mailbox
        if mailbox is None:
            mailbox = self._from_mailbox = Address(addr_spec=parseaddr(self._from)[1])
        return str(Address(display_name=name, username=mailbox.username, domain=mailbox.domain))

    def queue(self, session: Session, notice: Notice) -> None:
        """Record what to send, in the caller's transaction; the worker renders it (``compose``).

        Only the subject is rendered here (a one-line template, for `mail list`):
        rendering the bodies and building the MIME took ~30 % of a state change's
        CPU while the single write lock was held.
        """
        session.add(OutboxMessage(**self.prepare(notice)))

    def prepare(self, notice: Notice) -> dict[str, Any]:
        """The outbox row for ``notice``, ready to insert (``queue_prepared``): a caller that knows its
        emails before it takes the write lock prepares them outside it (the subject is rendered here)."""
        now = self._clock.now()
        check_recipient(notice.to)  # a bad address fails the change, not the worker later
        content = {
            "template": notice.template, "locale": notice.locale, "timezone": notice.timezone,
            "to_name": notice.to_name, "auto_submitted": notice.auto_submitted, "now": now,
            "context": notice.context,
        }
        ref = secrets.token_hex(6)
        return {
            "message_id": self._message_ids.new(),
            "ref": ref,
            "kind": notice.template,
            # VERP: a bounce comes back to an address that names this very email.
            "envelope_from": self.address(Purpose.BOUNCE, ref),
            "recipient": notice.to,
            "subject": self._renderer.subject(notice.template, notice.locale, notice.timezone, self._values(content)),
            "raw": None,
            "content": dump_content(content),
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "queued_at": now,
            "next_attempt_at": now,
            "invitation_id": notice.invitation_id,
            "company_id": notice.company_id,
            "firm_id": notice.firm_id,
            "audience": notice.audience,
        }

    def queue_prepared(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert prepared rows in the caller's transaction (a Core write), no ORM flush: on SQLite in
        multi-row INSERTs of up to ``SQLITE_ROWS`` rows, elsewhere one executemany."""
        if connection.dialect.name != "sqlite":
            # psycopg's executemany runs on a kept cursor; a multi-row INSERT built its SQL and a cursor per
            # call, 27k instructions more an accept (bench/README.md).
            _PREPARED_INSERT.many(connection, rows)
            return
        # SQLite runs an executemany's statement once per row; one statement for the rows took 16k
        # instructions fewer an accept (bench/callgrind_accept_write.py, batches of 16 accepts: 32 rows).
        for start in range(0, len(rows), SQLITE_ROWS):
            _PREPARED_INSERT.rows(connection, rows[start:start + SQLITE_ROWS])

    def _values(self, content: dict[str, Any]) -> dict[str, Any]:
        # ``now`` for deadlines ("in 47 hours"), ``to_name`` for the greeting (a name, never an address).
        to_name = content["to_name"]
        greeting = to_name if to_name and "@" not in to_name else ""
        return {"now": content["now"], "to_name": greeting, "product_name": self._product, **content["context"]}

    def compose(self, row: Any) -> bytes:
        """The bytes of a queued email: its stored ``raw``, or rendered now from its ``content``.

        Deterministic for a row (Message-ID, Date and reply address were fixed at
        queue time), and the worker stores the bytes at the first attempt, so every
        resend is byte-identical.
        """
        if row.raw is not None:
            return row.raw
        assert row.content is not None, "an outbox row has either its bytes or what to render"
        content = load_content(row.content)
        notice = Notice(
            template=content["template"], to=row.recipient, to_name=content["to_name"], locale=content["locale"],
            timezone=content["timezone"], context=content["context"], auto_submitted=content["auto_submitted"],
        )
        # The subject was rendered when the email was queued (``prepare``: the row's ``subject``, what `mail list`
        # shows); only the bodies are rendered here.
        text, html = self._renderer.bodies(notice.template, notice.locale, notice.timezone, self._values(content))
        # A reply makes sense when the email is about something (an invitation, a company).
        reply_to = self.address(Purpose.REPLY, row.ref) if row.invitation_id or row.company_id else None
        return message_bytes(
            from_address=self._from_header(notice),
            to=row.recipient,
            to_name=notice.to_name,
            subject=row.subject,
            text=text,
            html=html,
            message_id=row.message_id,
            date=content["now"],
            auto_submitted=notice.auto_submitted,
            reply_to=reply_to,
        )


@dataclass(frozen=True)
class _Claim:
    """One email this worker holds: only the holder of ``token`` renews the lease or records a result."""

    id: int
    token: str
    envelope_from: str
    recipient: str
    row: Any  # the row's columns (``_CLAIMED``): ``compose`` renders it outside any transaction when ``raw`` is NULL
    attempts: int
    queued_at: datetime
    rendered: bool  # the row already holds its bytes
    claimed_at: datetime  # the lease runs from here (or from its last renewal)
    raw: bytes | None = None  # the bytes to send: stored, or rendered at its turn (``_rendered``)
    render_error: str | None = None  # why rendering failed (recorded as a failed attempt)


@dataclass
class OutboxStats:
    """What this process's worker did since it started, for /metrics (counters, not table scans)."""

    # Send attempts by outcome: "sent", "deferred" (will retry), "bounced", "failed" (gave up), "lost" (claim lost).
    attempts: Counter[str] = field(default_factory=Counter)
    # Attempts at an email that had been tried before.
    retries: int = 0


class _ClaimsLost(Exception):
    """A batch of results matched fewer rows than it had: some claims passed to another worker."""


# Emails claimed at once: a pass starts with one per relay connection and doubles while the queue fills
# each claim, up to this many (claimed emails wait their turn in this worker, their leases checked).
MAX_CLAIM_BATCH = 64

# Claimed emails handed at once to a transport that takes batches (the Maildir: one thread hop and one fsync of
# ``new/`` for them all, where each email paid its own).
MAX_SEND_BATCH = 32


class GiveWay(Protocol):
    """Foreground work the worker gives way to (``daemon.accepts.Accepts``: whoever accepts waits for the
    303, nobody for the emails)."""

    async def wait_for_lull(self) -> bool:
        """Wait for a lull in the foreground work (True), or until it has waited long enough that the
        worker takes its turn anyway (False)."""

    def busy(self) -> bool:
        """Foreground work is under way, or just was: start no more emails until the next lull."""


# The bytes of a claimed email (``Outbox.compose``): stored, or rendered now; given an ``OutboxMessage`` or a Core
# row of its columns.
Compose = Callable[[Any], bytes]

# Marks an email bounced and acts on it (``daemon.undeliverable.Undeliverable.bounced``); returns what it did.
OnBounce = Callable[[Session, OutboxMessage, str], str]


# What sending a claimed email came to: an outcome recorded ("deferred", "bounced", …), the future of its
# "sent" mark, None (the claim passed to another worker), or the claim itself, given back unsent
# (``_send_batch`` cut short).
_Result = str | asyncio.Future[bool] | None | _Claim


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, … capped at an hour."""
    return min(timedelta(seconds=30 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def jittered(delay: timedelta, rng: random.Random) -> timedelta:
    """Between half and all of ``delay``: instances that failed together do not retry together."""
    return delay * rng.uniform(0.5, 1.0)


class OutboxWorker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        transport: Transport,
        clock: Clock,
        on_bounce: OnBounce,
        compose: Compose,
        give_up_after: timedelta,
        poll_interval: float,
        lease: timedelta = timedelta(minutes=2),
        rng: random.Random | None = None,
        on_give_up: OnBounce | None = None,
        concurrency: int = 1,
        give_way: GiveWay | None = None,
    ) -> None:
        self._sessions = sessions
        self._transport = transport
        self._clock = clock
        self._on_bounce = on_bounce
        self._on_give_up = on_give_up
        self._compose = compose
        self._give_up_after = give_up_after
        self._poll_interval = poll_interval
        self._lease = lease
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = False
        self._sending = 0
        self._concurrency = max(1, concurrency)  # emails in flight at once: one per relay connection
        # Requests waiting for their answers go first: the worker waits for a lull before it claims, and
        # starts no more emails (a send, a batch's next render) once they come in, unless it waited so long
        # (bounded by whoever gives way) that this claim's emails go anyway (``send_due``).
        self._give_way = give_way
        self.stats = OutboxStats()

    @property
    def sending(self) -> bool:
        """An email is being sent right now."""
        return self._sending > 0

    @property
    def drain_timeout(self) -> float:
        """How long ``stop`` may take: the send in flight, bounded by the transport, then its record."""
        return self._transport.timeout + 5.0

    def stop(self) -> None:
        """Finish the send in flight (at most the transport's timeout), then return from ``run``."""
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Called after a commit that queued mail, so it goes out now, not at the next poll."""
        self._wake.set()

    def _claim(self) -> _Claim | None:
        """Claim the next due email (one); see ``_claim_batch``."""
        claims = self._claim_batch(1)
        return claims[0] if claims else None

    def _claim_batch(self, limit: int) -> list[_Claim]:
        """Claim up to ``limit`` due emails for this worker, each with a lease of its own.

        One transaction for the batch (a claim per email was one fsync or
        commit round trip per email); the token is the batch's, but every
        lease, renewal and result is still per email (``id`` and token). On
        PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several instances claim
        different rows at once; on SQLite the write lock does the same. If
        this instance dies mid-send, the lease expires and another instance
        sends the email again with the same Message-ID (at least once,
        recognisably the same). Each email is rendered at its turn to be sent
        (``_send_claimed``), outside any transaction.
        """
        now = self._clock.now()
        table = OutboxMessage.__table__
        free = or_(table.c.claimed_until.is_(None), table.c.claimed_until < now)
        token = secrets.token_hex(16)
        # Core rows, not ORM objects: nothing to build, track and expunge while the write lock is held.
        # The worker's writes are background units (``GroupWriter``): nobody waits for their answer, so
        # the accepts and clicks queued for SQLite's writer go first (no-op on PostgreSQL).
        with write_connection(self._sessions, background=True) as connection:
            ids = connection.scalars(
                select(table.c.id)
                .where(table.c.state == "pending", table.c.next_attempt_at <= now, free)
                .order_by(table.c.next_attempt_at, table.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not ids:
                return []
            # The guard is repeated: on SQLite nothing locked the rows between the SELECT and here.
            claimed = connection.execute(
                update(table)
                .where(table.c.id.in_(ids), table.c.state == "pending", free)
                .values(claimed_until=now + self._lease, claim_token=token)
                .returning(*_CLAIMED)
            ).all()
        rows = sorted(claimed, key=lambda row: (row.next_attempt_at, row.id))
        claims = [_Claim(row.id, token, row.envelope_from, row.recipient, row, row.attempts,
                         row.queued_at or row.created_at, row.raw is not None, now, row.raw) for row in rows]
        return claims

    def _rendered(self, claim: _Claim) -> _Claim:
        """``claim`` with its bytes (stored, or rendered now), or with why they could not be rendered."""
        if claim.raw is not None:
            return claim
        try:
            return replace(claim, raw=self._compose(claim.row))
        except Exception as exc:  # a template error: retried (an operator can fix the template) until it fails
            log.exception("outbox message %s could not be rendered", claim.id)
            return replace(claim, render_error=f"not rendered: {exc}")

    def _release(self, claims: Sequence[_Claim]) -> None:
        """Give back claims not sent (the worker is stopping): due again at once, for any instance."""
        with write_transaction(self._sessions) as session:  # foreground: ``stop`` waits for it
            for claim in claims:
                session.execute(update(OutboxMessage).where(self._mine(claim)).values(claimed_until=None, claim_token=None))

    def _mine(self, claim: _Claim) -> ColumnElement[bool]:
        return and_(OutboxMessage.id == claim.id, OutboxMessage.claim_token == claim.token,
                    OutboxMessage.state == "pending")

    def _renew(self, claim: _Claim) -> bool:
        """Extend the lease; False when the claim is no longer this worker's.

        A foreground unit, unlike the worker's other writes: a background one waits while any foreground
        unit is queued, so a long unbroken run of accepts could keep it waiting past the lease's end (and
        the email would be sent twice). One short UPDATE per email a third of a lease into its send."""
        with write_transaction(self._sessions) as session:
            return rows_changed(
                session,
                update(OutboxMessage).where(self._mine(claim)).values(claimed_until=self._clock.now() + self._lease)
            ) == 1

    def _raw(self, claim: _Claim, raw: bytes | None) -> dict[str, object]:
        """The bytes to store with the first attempt's result: every resend sends the same bytes. What they
        were rendered from goes: ``compose`` reads only the bytes once they are there, and on PostgreSQL
        the sent mark's new row version (never a HOT update: ``state`` is indexed) is written whole to the
        WAL, the rendering's facts (about 600 bytes) with the bytes (bench/pg_accept_work.py)."""
        return {"raw": raw, "content": None} if raw is not None and not claim.rendered else {}

    def _record_sent(self, claim: _Claim, answer: str, raw: bytes | None = None) -> bool:
        with write_transaction(self._sessions, background=True) as session:
            return rows_changed(
                session,
                update(OutboxMessage).where(self._mine(claim)).values(
                    state="sent", sent_at=self._clock.now(), attempts=OutboxMessage.attempts + 1,
                    last_answer=storable(answer, 2000), last_error=None, claimed_until=None, claim_token=None,
                    **self._raw(claim, raw),
                )
            ) == 1

    def _record_sent_many(self, results: Sequence[tuple[_Claim, str, bytes | None]]) -> list[bool]:
        """Mark a batch of sent emails in one transaction; one True per email still ours.

        One UPDATE statement run for many rows (one round trip on PostgreSQL's
        pipeline); if fewer rows changed than were given (a claim lost to
        another worker) or the batch fails, each is recorded on its own, so
        one email's trouble is only that email's.
        """
        now = self._clock.now()
        with_raw = [r for r in results if r[2] is not None and not r[0].rendered]
        without_raw = [r for r in results if not (r[2] is not None and not r[0].rendered)]
        try:
            with write_transaction(self._sessions, background=True) as session:
                connection = session.connection()
                # Each group with what its UPDATE sets besides what all set: an email rendered now keeps its
                # bytes (raw) instead of its content; the others, nothing more.
                groups: tuple[tuple[list[tuple[_Claim, str, bytes | None]], dict[str, Any]], ...] = (
                    (with_raw, {"raw": bindparam("b_raw"), "content": None}), (without_raw, {}))
                for group, extra in groups:
                    if not group:
                        continue
                    statement = update(OutboxMessage.__table__).where(
                        OutboxMessage.id == bindparam("b_id"), OutboxMessage.claim_token == bindparam("b_token"),
                        OutboxMessage.state == "pending",
                    ).values(
                        state="sent", sent_at=now, attempts=OutboxMessage.attempts + 1,
                        last_answer=bindparam("b_answer"), last_error=None, claimed_until=None, claim_token=None,
                        **extra,
                    )
                    params = [{"b_id": claim.id, "b_token": claim.token, "b_answer": storable(answer, 2000),
                               **({"b_raw": raw} if extra else {})} for claim, answer, raw in group]
                    if connection.execute(statement, params).rowcount != len(params):
                        raise _ClaimsLost()
        except Exception as exc:
            if not isinstance(exc, _ClaimsLost):
                log.warning("recording %d sent emails at once failed (%s); recording each on its own", len(results), exc)
            return [self._record_sent_alone(*result) for result in results]
        return [True] * len(results)

    def _record_sent_alone(self, claim: _Claim, answer: str, raw: bytes | None) -> bool:
        try:
            return self._record_sent(claim, answer, raw)
        except Exception:  # left claimed: sent again (same Message-ID) once the lease runs out
            log.exception("outbox message %s was sent but could not be marked sent", claim.id)
            return False

    def _record_failure(self, claim: _Claim, error: TransportError, raw: bytes | None = None) -> str | None:
        """Record a failed attempt if the claim is still ours; returns the outcome, None if it was not."""
        now = self._clock.now()
        reason = storable(str(error), 2000)
        values: dict[str, object] = {
            "attempts": OutboxMessage.attempts + 1, "last_error": reason, "last_answer": reason,
            "claimed_until": None, "claim_token": None, **self._raw(claim, raw),
        }
        deadline = claim.queued_at + self._give_up_after
        if error.permanent:
            outcome = "bounced"
        elif now >= deadline:
            outcome, values["state"] = "failed", "failed"
        else:
            outcome = "deferred"
            values["next_attempt_at"] = min(now + jittered(backoff(claim.attempts + 1), self._rng), deadline)
        with write_transaction(self._sessions, background=True) as session:
            if rows_changed(session, update(OutboxMessage).where(self._mine(claim)).values(**values)) != 1:
                return None
            if error.permanent:
                row = session.get(OutboxMessage, claim.id)
                assert row is not None
                log.warning("outbox message %s refused by the relay: %s", claim.id,
                            self._on_bounce(session, row, reason))
            elif outcome == "failed":
                log.error("outbox message %s to %s failed: still undelivered after %s (%s); "
                          "`cabinet mail retry %s` queues it again", claim.id, claim.recipient,
                          self._give_up_after, reason, claim.id)
                if self._on_give_up is not None:  # its inviter is told, as for a bounce
                    row = session.get(OutboxMessage, claim.id)
                    assert row is not None
                    log.warning("outbox message %s given up: %s", claim.id, self._on_give_up(session, row, reason))
            else:
                log.warning("outbox message %s not sent (attempt %s), will retry: %s",
                            claim.id, claim.attempts + 1, reason)
        return outcome

    async def _keep_lease(self, claim: _Claim, sending: asyncio.Task[str], lost: asyncio.Event) -> None:
        """Renew the lease while ``sending`` runs, every third of it, the first time at once (``_keeper``
        starts this when the first renewal is due); if another worker has the email now, stop sending."""
        interval = self._lease.total_seconds() / 3
        while True:
            if not await self._renewed(claim):
                lost.set()
                sending.cancel()
                return
            await asyncio.sleep(interval)

    async def _renewed(self, claim: _Claim) -> bool:
        """Renew ``claim``'s lease; False if another worker has the email now."""
        try:
            return await asyncio.to_thread(self._renew, claim)
        except Exception:  # the database may be back before the lease runs out: keep sending
            log.exception("outbox message %s: could not renew the lease", claim.id)
            return True

    def _keeper(self, keep: Callable[[], Coroutine[Any, Any, None]],
                started: list[asyncio.Task[None]]) -> asyncio.TimerHandle:
        """A timer that starts ``keep()`` (``_keep_lease``, ``_keep_leases``) when the first renewal is due
        (into ``started``). Nearly every send ends long before: a keeper task per email, started and
        cancelled at once, was a good part of the worker's event-loop work (a task, its sleep's timer, its
        cancellation). ``_stop_keeper`` ends both."""
        return asyncio.get_running_loop().call_later(
            self._lease.total_seconds() / 3,
            lambda: started.append(asyncio.get_running_loop().create_task(keep())),
        )

    @staticmethod
    async def _stop_keeper(timer: asyncio.TimerHandle, started: list[asyncio.Task[None]]) -> None:
        timer.cancel()
        for keeper in started:
            keeper.cancel()
        if started:
            await asyncio.gather(*started, return_exceptions=True)

    async def _send(self, claim: _Claim, recorder: BatchRecorder[tuple[_Claim, str, bytes | None], bool]
                    ) -> str | asyncio.Future[bool] | None:
        """Send one claimed email; returns the recorded outcome, or for a sent one the future of its mark."""
        if claim.attempts:
            self.stats.retries += 1
        self._sending += 1
        try:
            return await self._send_claimed(claim, recorder)
        finally:
            self._sending -= 1

    async def _send_one(self, claim: _Claim, recorder: BatchRecorder[tuple[_Claim, str, bytes | None], bool]
                        ) -> list[_Result]:
        return [await self._send(claim, recorder)]

    async def _still_mine(self, claim: _Claim) -> bool:
        """A claim that waited its turn for half its lease is renewed first; False if it is no longer ours."""
        if self._clock.now() - claim.claimed_at < self._lease / 2:
            return True
        return await asyncio.to_thread(self._renew, claim)

    async def _send_claimed(self, claim: _Claim, recorder: BatchRecorder[tuple[_Claim, str, bytes | None], bool]
                            ) -> str | asyncio.Future[bool] | None:
        # Rendered at its turn, on the loop (about a millisecond; a template error is recorded below as this
        # email's failed attempt), not with its whole claimed batch in the claim's thread: 64 bodies rendered
        # at once held the one core for tens of milliseconds while accepts waited for their answers.
        claim = self._rendered(claim)
        if claim.render_error is not None:
            return await asyncio.to_thread(self._record_failure, claim, TransportError(claim.render_error))
        if not await self._still_mine(claim):
            return None
        raw = claim.raw
        assert raw is not None
        lost = asyncio.Event()
        sending = asyncio.create_task(self._transport.send(claim.envelope_from, [claim.recipient], raw))
        keepers: list[asyncio.Task[None]] = []
        timer = self._keeper(lambda: self._keep_lease(claim, sending, lost), keepers)
        error: TransportError | None = None
        try:
            answer = await sending
        except TransportError as exc:
            error = exc
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
        finally:
            await self._stop_keeper(timer, keepers)
        if lost.is_set():
            return None
        if error is None:
            return recorder.add((claim, answer, raw))  # marked with others; nobody waits for the mark
        return await asyncio.to_thread(self._record_failure, claim, error, raw)

    async def _send_batch(self, claims: Sequence[_Claim],
                          recorder: BatchRecorder[tuple[_Claim, str, bytes | None], bool],
                          cut_short: Callable[[], bool] | None = None) -> list[_Result]:
        """``_send`` for several claimed emails given to a ``BatchTransport`` at once, in order; one result each.

        Each is rendered at its turn on the loop (as ``_send_claimed``, the loop free for requests between
        two), then the batch goes to the transport in one call. Each email keeps its own lease (renewed while
        the batch takes long), answer and result: one whose claim passed to another worker meanwhile is that
        worker's to record (``None``), the others' results are recorded as usual. Once ``cut_short()`` says
        so (requests came in), the emails not rendered or delivered yet are not sent: their result is their
        claim (with its bytes, if rendered), given back to wait for the next lull. A batch of 32 went on
        rendering and delivering for 50–250 ms into the accepts that came in meanwhile, on their one core.
        """
        transport = self._transport
        assert isinstance(transport, BatchTransport)
        results: list[_Result] = list(claims)
        ready: list[tuple[int, _Claim]] = []
        self._sending += 1
        try:
            for n, claim in enumerate(claims):
                if n and cut_short is not None and cut_short():
                    break
                results[n] = None
                if claim.attempts:
                    self.stats.retries += 1
                claim = self._rendered(claim)
                if claim.render_error is not None:
                    results[n] = await asyncio.to_thread(self._record_failure, claim, TransportError(claim.render_error))
                elif await self._still_mine(claim):
                    ready.append((n, claim))
                await asyncio.sleep(0)  # requests waiting on the loop go between two renders
            if not ready:
                return results
            lost: set[int] = set()
            keepers: list[asyncio.Task[None]] = []
            timer = self._keeper(lambda: self._keep_leases([claim for _, claim in ready], lost), keepers)
            try:
                answers = await transport.send_batch([(c.envelope_from, [c.recipient], c.raw or b"") for _, c in ready],
                                                     cut_short)
            finally:
                await self._stop_keeper(timer, keepers)
            for n, claim in ready[len(answers):]:  # cut short: given back with its bytes, unless lost meanwhile
                results[n] = None if claim.id in lost else claim
            for (n, claim), answer in zip(ready, answers):
                if claim.id in lost:
                    continue
                if isinstance(answer, TransportError):
                    results[n] = await asyncio.to_thread(self._record_failure, claim, answer, claim.raw)
                else:
                    results[n] = recorder.add((claim, answer, claim.raw))  # marked with others, as ``_send_claimed``
            return results
        finally:
            self._sending -= 1

    async def _keep_leases(self, claims: Sequence[_Claim], lost: set[int]) -> None:
        """``_keep_lease`` for a batch being sent: each claim renewed every third of the lease; one that is
        no longer this worker's goes into ``lost`` (a batch is not cut short: its other emails are still ours)."""
        interval = self._lease.total_seconds() / 3
        while True:
            for claim in claims:
                if claim.id not in lost and not await self._renewed(claim):
                    lost.add(claim.id)
            await asyncio.sleep(interval)

    def _count(self, claim_id: int, outcome: str | None) -> bool:
        if outcome is None:
            log.warning("outbox message %s: the claim passed to another worker; it records the result", claim_id)
            outcome = "lost"
        self.stats.attempts[outcome] += 1
        return outcome == "sent"

    async def send_due(self) -> int:
        """Send everything due now, up to ``concurrency`` at a time; returns how many were sent.

        Claims come in batches (one transaction for many emails; the batch
        grows while the queue keeps filling it) and "sent" marks are written
        in batches too; each email still has its own lease, token and result.
        """
        recorder: BatchRecorder[tuple[_Claim, str, bytes | None], bool] = BatchRecorder(self._record_sent_many)
        marks: list[tuple[int, asyncio.Future[bool]]] = []
        waiting: deque[_Claim] = deque()
        # Each task sends one email, or a batch of them (``_send_batch``): its claims' ids, its results in order.
        in_flight: dict[asyncio.Task[list[_Result]], list[int]] = {}
        batches = isinstance(self._transport, BatchTransport)
        batch = self._concurrency
        exhausted = look_again = False
        # This claim's emails go whatever comes in: the worker waited ``give_way``'s longest for a lull.
        forced = False
        give_way = self._give_way
        try:
            while True:
                # Requests came in and nothing is being sent: wait for a lull before the next email, claimed or not.
                yielding = give_way is not None and not forced and not in_flight and give_way.busy()
                if (not waiting and not exhausted or waiting and yielding) and not self._stopping:
                    if give_way is not None:
                        forced = not await give_way.wait_for_lull()
                        if self._stopping:  # stopped while giving way: claim nothing more
                            continue
                if not waiting and not exhausted and not self._stopping:
                    claims = await asyncio.to_thread(self._claim_batch, batch)
                    exhausted = len(claims) < batch
                    if not exhausted:
                        batch = min(batch * 2, MAX_CLAIM_BATCH)
                    waiting.extend(claims)
                cut_short = None if give_way is None or forced else give_way.busy
                while waiting and len(in_flight) < self._concurrency and not self._stopping:
                    if in_flight and cut_short is not None and cut_short():
                        break  # the emails in flight finish; the next waits for a lull
                    if batches:
                        group = [waiting.popleft() for _ in range(min(len(waiting), MAX_SEND_BATCH))]
                        in_flight[asyncio.create_task(self._send_batch(group, recorder, cut_short))] = [
                            c.id for c in group]
                    else:
                        claim = waiting.popleft()
                        in_flight[asyncio.create_task(self._send_one(claim, recorder))] = [claim.id]
                if not in_flight:
                    if not exhausted and not self._stopping:
                        continue
                    if not look_again or self._stopping:
                        break
                    look_again, exhausted = False, False
                    continue
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    given_back: list[_Claim] = []
                    for claim_id, result in zip(in_flight.pop(task), task.result(), strict=True):
                        if isinstance(result, _Claim):  # not started: sent after the next lull, in order
                            given_back.append(result)
                        elif isinstance(result, asyncio.Future):
                            marks.append((claim_id, result))
                        else:
                            self._count(claim_id, result)
                            # A bounce or a give-up may queue a notice: look again before the pass ends.
                            look_again = look_again or result in ("bounced", "failed")
                    waiting.extendleft(reversed(given_back))
        finally:
            if in_flight:  # an error above: let the other sends finish and record their results
                for task, claim_ids in in_flight.items():
                    try:
                        results = await task
                    except BaseException:
                        continue
                    marks.extend((claim_id, result) for claim_id, result in zip(claim_ids, results, strict=True)
                                 if isinstance(result, asyncio.Future))
                    waiting.extend(result for result in results if isinstance(result, _Claim))
            if waiting:  # stopping: what was claimed but not sent is due again at once, for anyone
                await asyncio.to_thread(self._release, list(waiting))
            await recorder.drain()
        outcomes = [(claim_id, await mark) for claim_id, mark in marks]
        return sum(self._count(claim_id, "sent" if mine else None) for claim_id, mine in outcomes)

    async def flush(self) -> int:
        """``send_due`` then release the relay connections (for a one-shot command)."""
        try:
            return await self.send_due()
        finally:
            await self._transport.close()

    async def run(self) -> None:
        """Send until stopped, waking on ``wake()`` or every poll interval."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not stop the worker for good
                log.exception("outbox worker pass failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            except TimeoutError:
                pass
        await self._transport.close()
