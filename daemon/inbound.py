"""Inbound mail: store before acknowledging, then understand and act, exactly once.

``store`` runs while the SMTP client waits: it commits the raw bytes and
nothing else. ``process_due`` works from the stored copy; each message's
effects (an acceptance, a bounce mark, a forward) and its new state commit
in one transaction, so a crash mid-way means the message is simply processed
again, and a processed message is never processed twice. A message that keeps
failing is quarantined and the rest keep flowing.

Processing is cheap inside the write lock: a message is parsed once, and
everything that needs no row lock (the sender proof, and for an ordinary reply
the whole forward: who hears it, the emails prepared) is read and worked out
before the write transaction, which then only checks and inserts rows. Several
messages share one write transaction (one commit), each in its own SAVEPOINT,
and that transaction ends early whenever stores wait for SQLite's writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.exc import DataError, SQLAlchemyError

from daemon import rawmail
from daemon.autoreplies import is_auto_reply
from daemon.bounces import Bounce, UnreadableBounce, parse_bounce
from daemon.config import InboundConfig
from daemon.db import engine_of, write_connection, write_transaction, writes_waiting
from daemon.domain import DomainContext, DomainService, name_key
from daemon.errors import CabinetError, InvalidState, LinkTampered, NotFound
from daemon.inbound_reads import BatchReads
from daemon.kept_writes import KeptWrites
from daemon.models import Company, Event, Firm, InboundMessage, InboundState, Invitation, Membership, OutboxMessage, User
from daemon.notices import Notice
from daemon.prepared_write import PreparedWrite
from daemon.replies import Command, parse_command, reply_text
from daemon.roster import Roster
from daemon.senders import SenderVerdict, prove_sender
from daemon.tokens import Purpose
from daemon.transitions import Transition, TransitionEach, TransitionLost, transition
from daemon.undeliverable import Undeliverable

log = logging.getLogger(__name__)

EXCERPT = 4000  # characters of a reply kept in events and forwards
# An unproven reply command is answered (with the link) at most once per invitation in this time
# (``[limits] unproven_reply_answer_minutes``).
ANSWER_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class InboundView:
    id: int
    received_at: datetime
    mail_from: str
    recipients: tuple[str, ...]
    message_id: str | None
    state: str
    kind: str | None
    outcome: str | None
    attempts: int
    last_error: str | None
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "mail_from": self.mail_from,
            "recipients": list(self.recipients),
            "message_id": self.message_id,
            "state": self.state,
            "kind": self.kind,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "size": self.size,
        }


# Messages acted on in one write transaction (each in its own SAVEPOINT): one commit for them all.
BATCH = 32


@dataclass(frozen=True)
class _Stored:
    """A stored message as processing reads it: its bytes and envelope never change once stored."""

    id: int
    mail_from: str
    recipients: list[str]
    message_id: str | None
    raw: bytes

    @classmethod
    def of(cls, row: Any) -> _Stored:
        return cls(row.id, row.mail_from, json.loads(row.recipients), row.message_id, row.raw)


_STORED = (InboundMessage.id, InboundMessage.mail_from, InboundMessage.recipients, InboundMessage.message_id,
           InboundMessage.raw)

# Processing's statements, built once and run on the connection (Core): per message, building them
# and the ORM's execution layer cost more than the database did.
_INBOUND = InboundMessage.__table__
_LOCK = (
    select(_INBOUND.c.id)
    .where(_INBOUND.c.id == bindparam("row_id"), _INBOUND.c.state == InboundState.RECEIVED.value)
    .with_for_update(skip_locked=True)
)
_EARLIER = (
    select(_INBOUND.c.id)
    .where(
        _INBOUND.c.message_id == bindparam("message_id"), _INBOUND.c.id < bindparam("row_id"),
        _INBOUND.c.state.in_([s.value for s in (InboundState.PROCESSED, InboundState.RECEIVED, InboundState.QUARANTINED)]),
    )
    .order_by(_INBOUND.c.id)
    .limit(1)
)
_LOCK_MANY = (
    select(_INBOUND.c.id)
    .where(_INBOUND.c.id.in_(bindparam("ids", expanding=True)), _INBOUND.c.state == InboundState.RECEIVED.value)
    .with_for_update(skip_locked=True)
)
# The first stored message of each Message-ID (a later one is a duplicate of it).
_FIRST_OF = (
    select(_INBOUND.c.message_id, func.min(_INBOUND.c.id))
    .where(
        _INBOUND.c.message_id.in_(bindparam("message_ids", expanding=True)),
        _INBOUND.c.state.in_([s.value for s in (InboundState.PROCESSED, InboundState.RECEIVED, InboundState.QUARANTINED)]),
    )
    .group_by(_INBOUND.c.message_id)
)
_FINISH_MANY = TransitionEach(InboundMessage, (InboundState.RECEIVED,), values={
    "kind": bindparam("b_kind"), "outcome": bindparam("b_outcome"), "processed_at": bindparam("b_at"),
    "attempts": _INBOUND.c.attempts + 1,
})
_INSERT_EVENT = insert(Event.__table__)
# The store's INSERT, one per dialect. The unique digest decides, not a check before the insert: two
# sessions storing the same bytes at once end with one row, and neither fails. RETURNING names the new rows.
# Its columns are those ``Inbound._row`` gives (``PreparedWrite``: no Python default is left to fill in).
# Run twice, it stores nothing more (``KeptWrites`` runs it again when its connection is lost mid-way).
_STORE_COLUMNS = ("received_at", "mail_from", "recipients", "raw", "state", "message_id", "digest", "attempts",
                  "next_attempt_at")
_STORE = {
    name: PreparedWrite(dialect.insert(_INBOUND).on_conflict_do_nothing(index_elements=["digest"])
                        .returning(_INBOUND.c.digest, _INBOUND.c.id), _STORE_COLUMNS)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
# The ids of messages already stored (the same bytes delivered again after a lost 250).
_BY_DIGEST = select(_INBOUND.c.digest, _INBOUND.c.id).where(_INBOUND.c.digest.in_(bindparam("digests", expanding=True)))


@dataclass(frozen=True)
class _Ready:
    """A message read and judged before its write transaction (nothing here needs the database)."""

    stored: _Stored
    message: EmailMessage
    refs: list[tuple[Purpose, str]]
    proof: SenderVerdict | None
    plan: _Plan | None = None  # what it does, when that was decided before the write transaction
    text: str | None = None  # what a reply's sender wrote (``reply_text``), when it was read here


@dataclass(frozen=True)
class _Plan:
    """A message's whole effect worked out before its write transaction (it changes no row but adds
    its own): the transaction checks it is not a duplicate, inserts these rows and records the outcome."""

    kind: str
    outcome: str
    event: dict[str, Any] | None = None  # an event row's columns
    emails: list[dict[str, Any]] = field(default_factory=list)  # prepared outbox rows


class _Done(Exception):
    """Processing reached a decision; ``kind`` and ``outcome`` say which."""

    def __init__(self, kind: str, outcome: str) -> None:
        super().__init__(outcome)
        self.kind = kind
        self.outcome = outcome


def _mismatch(bounce: Bounce, outbox: OutboxMessage) -> str:
    """Why ``bounce`` is not a report about ``outbox`` ("" when it is)."""
    if outbox.recipient.lower() not in bounce.recipients:
        return f"it reports {', '.join(bounce.recipients) or 'no recipient'}, not {outbox.recipient}"
    reported = (bounce.original_message_id or "").strip()
    if reported and reported.strip("<>") != outbox.message_id.strip().strip("<>"):
        return f"it reports Message-ID {reported[:200]}, not {outbox.message_id}"
    return ""


def _address(header_value: str | None) -> str:
    return parseaddr(header_value or "")[1].strip().lower()


def _with_first_copies(inserted: dict[str, int], rows: list[dict[str, Any]],
                       connect: Callable[[], AbstractContextManager[Connection]]) -> dict[str, int]:
    """``inserted`` (the new rows' ids by digest) with the ids of the bytes stored before (a sender's
    retry after a lost 250, which ``ON CONFLICT DO NOTHING`` inserted nothing for): their first copy's,
    read on ``connect()``'s connection only when there are any."""
    missing = sorted({row["digest"] for row in rows} - inserted.keys())
    if missing:
        with connect() as connection:
            inserted.update(connection.execute(_BY_DIGEST, {"digests": missing}).all())
    assert len(inserted) == len({row["digest"] for row in rows})
    return inserted


class Inbound(DomainService):
    def __init__(
        self, ctx: DomainContext, roster: Roster, config: InboundConfig, domain: str, from_address: str,
        dnsfunc: Callable[..., Any] | None = None, answer_interval: timedelta = ANSWER_INTERVAL,
    ) -> None:
        super().__init__(ctx)
        self._roster = roster
        self._config = config
        self._domain = domain.lower()
        self._own = _address(from_address)
        self._undeliverable = Undeliverable(ctx)
        self._dnsfunc = dnsfunc  # DKIM key lookups (dkimpy's resolver when None)
        self._answer_interval = answer_interval
        self._headers = rawmail.HeaderCache()  # headers that repeat across messages, parsed once
        # PostgreSQL: a store is one autocommit statement on a kept connection (``_stored``).
        engine = engine_of(self._sessions)
        self._kept = KeptWrites(engine) if engine.dialect.name == "postgresql" else None
        # A processed message's last move, one Core statement each (no ORM bulk update per message).
        finish = {"kind": bindparam("new_kind"), "outcome": bindparam("new_outcome"),
                  "processed_at": bindparam("new_processed_at"), "attempts": InboundMessage.__table__.c.attempts + 1}
        self._finish = {
            duplicate: Transition(InboundMessage, [InboundState.RECEIVED],
                                  InboundState.DUPLICATE if duplicate else InboundState.PROCESSED, values=finish)
            for duplicate in (False, True)
        }

    # -- receiving -----------------------------------------------------------------

    def recipient_ref(self, address: str) -> tuple[Purpose, str] | None:
        """The reference in one of our ``reply+``/``bounce+`` addresses, or None if it is not ours."""
        local, _, domain = address.rpartition("@")
        if domain.lower() != self._domain:
            return None
        prefix, plus, token = local.partition("+")
        purposes = {"reply": Purpose.REPLY, "bounce": Purpose.BOUNCE}
        if not plus or prefix.lower() not in purposes:
            return None
        purpose = purposes[prefix.lower()]
        try:
            return purpose, self._signer.verify_address(purpose, token)
        except LinkTampered:
            return None

    def accepts(self, address: str) -> bool:
        return address.lower() in self._config.firm_addresses or self.recipient_ref(address) is not None

    def store(self, mail_from: str, recipients: list[str], raw: bytes) -> int:
        """Commit the message; the caller answers 250 only after this returns.

        The same bytes delivered again are not stored twice (the sender's
        retry after a lost 250); the first copy's id is returned.
        """
        values = self._row(mail_from, recipients, raw, self._now())
        return self._stored([values])[values["digest"]]

    def store_many(self, messages: Sequence[tuple[str, list[str], bytes]]) -> list[int | Exception]:
        """``store`` for several messages at once (the SMTP listener's concurrent DATAs): one transaction.

        Each gets its own outcome, an id or the exception that kept it from
        being stored: if the batch fails, each message is stored on its own,
        so one bad message is answered 451 and the others 250.
        """
        now = self._now()
        try:
            rows = [self._row(mail_from, recipients, raw, now) for mail_from, recipients, raw in messages]
            ids = self._stored(rows)
            return [ids[row["digest"]] for row in rows]
        except Exception:
            if len(messages) == 1:
                raise
            log.warning("storing %d inbound messages at once failed; storing each on its own", len(messages),
                        exc_info=True)
        outcomes: list[int | Exception] = []
        for mail_from, recipients, raw in messages:
            try:
                outcomes.append(self.store(mail_from, recipients, raw))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _row(self, mail_from: str, recipients: list[str], raw: bytes, now: datetime) -> dict[str, Any]:
        # Nothing here may raise on odd bytes (a raise is a 451 and the same bytes again, forever):
        # the Message-ID is read defensively and the envelope sender kept storable; processing judges the rest.
        return dict(
            received_at=now, mail_from=rawmail.storable(mail_from, 320), recipients=json.dumps(recipients), raw=raw,
            state=InboundState.RECEIVED.value, message_id=rawmail.message_id(raw),
            digest=hashlib.sha256(raw).hexdigest(), attempts=0, next_attempt_at=now,
        )

    def _stored(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Store ``rows`` in one statement, durable when this returns; the id stored under each digest
        (the first copy's, for bytes stored before or twice in ``rows``).

        One multi-row ``VALUES`` straight on the driver's cursor (``PreparedWrite.rows``): through
        ``Connection.execute`` the execution context, the cache lookup and the result object cost more
        than the statement. On SQLite in a unit of the group writer (no Session for a store); on
        PostgreSQL in autocommit on a kept connection (``KeptWrites``): its own transaction, one round trip
        where the pool's BEGIN, INSERT and COMMIT were three.
        """
        if not rows:
            return {}
        kept = self._kept
        if kept is None:
            with write_connection(self._sessions) as connection:
                inserted = dict(_STORE[connection.dialect.name].rows(connection, rows))
                return _with_first_copies(inserted, rows, lambda: nullcontext(connection))
        store = _STORE["postgresql"]
        sql, parameters = store.rows_statement(kept.dialect, rows)
        inserted = dict(map(store.compiled(kept.dialect).typed, kept.run(sql, parameters)))
        # The first copies' ids read on a pooled connection (rare; those rows are committed: the INSERT
        # waited for the transaction that wrote them).
        return _with_first_copies(inserted, rows, kept.engine.connect)

    # -- processing --------------------------------------------------------------------

    def process_due(self, limit: int = 100, give_way: Callable[[], object] | None = None) -> int:
        """Process stored messages that are due; returns how many reached a final state.

        Reading, parsing and proving the senders happen before any write
        transaction; then the messages act in batches, each in a SAVEPOINT of one
        write transaction (one commit for the batch, one bad message fails only
        itself). The batch gives way to waiting stores, and ``give_way`` (the
        listener's, while deliveries arrive) is called before each batch: SMTP
        is answered first (what it returns, whether it found a lull, is not needed here).
        """
        with self._sessions() as s:
            due = s.execute(
                select(*_STORED)
                .where(InboundMessage.state == InboundState.RECEIVED, InboundMessage.next_attempt_at <= self._now())
                .order_by(InboundMessage.id)
                .limit(limit)
            ).all()
        done = 0
        for first in range(0, len(due), BATCH):
            if give_way is not None:
                give_way()
            done += self._process_batch([_Stored.of(row) for row in due[first:first + BATCH]])
        return done

    def process(self, inbound_id: int) -> int:
        """Process one stored message now (``cabinet inbound process``); 1 if it reached a final state."""
        with self._sessions() as s:
            row = s.execute(
                select(*_STORED)
                .where(InboundMessage.id == inbound_id, InboundMessage.state == InboundState.RECEIVED)
            ).one_or_none()
        return 0 if row is None else self._process_batch([_Stored.of(row)])

    def _process_batch(self, stored: list[_Stored]) -> int:
        ready: list[_Ready] = []
        failures: list[tuple[int, Exception]] = []
        parsed: list[_Ready] = []
        for message in stored:
            try:
                # Parsing and DNS lookups (DKIM keys) happen here, before any write transaction: nobody waits on them.
                parsed.append(self._ready(message))
            except Exception as exc:
                failures.append((message.id, exc))
        with self._sessions() as s:
            reads = BatchReads(s.connection)
            try:
                # What the replies' forwards need, for the whole batch at once (a few statements, not four each).
                reads.prefetch(refs[0] for refs in ([ref for purpose, ref in one.refs if purpose is Purpose.REPLY]
                                                    for one in parsed) if refs)
            except Exception:
                log.warning("reading what %d inbound messages need at once failed; reading it for each",
                            len(parsed), exc_info=True)
                s.rollback()
            for one in parsed:
                try:
                    ready.append(replace(one, plan=self._plan(reads, one)))
                except Exception as exc:
                    failures.append((one.stored.id, exc))
                    s.rollback()  # PostgreSQL refuses further statements in a transaction that failed one
        done = 0
        while ready:
            try:
                acted, ready, failed = self._act_batch(ready)
            except Exception as batch_error:  # the batch's transaction itself failed (its commit, a lost connection)
                if len(ready) == 1:
                    acted, failed, ready = 0, [(ready[0].stored.id, batch_error)], []
                else:
                    log.warning("processing %d inbound messages at once failed; processing each on its own",
                                len(ready), exc_info=True)
                    acted, failed = 0, []
                    for one in ready:
                        try:
                            one_acted, _, one_failed = self._act_batch([one])
                        except Exception as exc:
                            failed.append((one.stored.id, exc))
                        else:
                            acted += one_acted
                            failed.extend(one_failed)
                    ready = []
            done += acted
            failures.extend(failed)
        for inbound_id, error in failures:
            done += self._failure(inbound_id, error)
        return done

    def _act_batch(self, ready: list[_Ready]) -> tuple[int, list[_Ready], list[tuple[int, Exception]]]:
        """Act on ``ready`` messages in one write transaction.

        The planned ones are written together (a few statements for them all:
        ``_apply_all``); each of the others (a bounce, a command) runs in its
        own SAVEPOINT. Returns how many reached a final state, the messages left
        for the next transaction (this one ended early because stores were
        waiting), and those whose attempt failed (rolled back to their
        savepoint) with the reason. If the planned ones' writes fail, the whole
        transaction does, and the caller acts on each message on its own.
        """
        done = 0
        failed: list[tuple[int, Exception]] = []
        planned = [message for message in ready if message.plan is not None]
        others = [message for message in ready if message.plan is None]
        with write_transaction(self._sessions, background=True) as s:
            if planned:
                done += self._apply_all(s.connection(), planned)
            for i, message in enumerate(others):
                if (i or planned) and writes_waiting(self._sessions):
                    return done, others[i:], failed  # committed with the stores that wait, in their group
                try:
                    with s.begin_nested():
                        done += self._act(s, message)
                except Exception as exc:
                    failed.append((message.stored.id, exc))
        return done, [], failed

    def _apply_all(self, connection: Connection, planned: list[_Ready]) -> int:
        """The planned messages' effects and outcomes, written together: their rows locked in one
        statement, their duplicates found in one, then one executemany each for the events, the
        emails and the outcomes."""
        ids = [message.stored.id for message in planned]
        locked = set(connection.scalars(_LOCK_MANY, {"ids": ids}))
        message_ids = sorted({m.stored.message_id for m in planned if m.stored.message_id})
        first = dict(connection.execute(_FIRST_OF, {"message_ids": message_ids}).all()) if message_ids else {}
        events: list[dict[str, Any]] = []
        emails: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        now = self._now()
        for message in planned:
            row = message.stored
            if row.id not in locked:  # another instance has it, or it is no longer received
                continue
            earlier = first.get(row.message_id) if row.message_id else None
            if earlier is not None and earlier < row.id:
                state, kind, outcome = (InboundState.DUPLICATE, "duplicate",
                                        f"same Message-ID as inbound message {earlier}; no second effect")
            else:
                plan = message.plan
                assert plan is not None
                state, kind, outcome = InboundState.PROCESSED, plan.kind, plan.outcome
                if plan.event is not None:
                    events.append(plan.event)
                emails.extend(plan.emails)
            outcomes.append({"b_id": row.id, "b_state": state.value, "b_kind": kind,
                             "b_outcome": rawmail.storable(outcome, 10000), "b_at": now})
        if events:
            connection.execute(_INSERT_EVENT, events)
        self._notifier.queue_prepared(connection, emails)
        if outcomes:
            # Under the row locks taken above, so the guard cannot lose: it only says so if it did.
            _FINISH_MANY.run(connection, outcomes)
        return len(outcomes)

    def _act(self, s: Session, message: _Ready) -> int:
        """A message decided inside the transaction (a bounce, a command), under its row's lock."""
        # Locked for this transaction: another instance skips it rather than processing it too.
        connection = s.connection()
        if connection.scalar(_LOCK, {"row_id": message.stored.id}) is None:
            return 0
        kind: str | None = None
        outcome: str | None = None
        try:
            self._not_a_duplicate(connection, message.stored)
            self._understand(s, message)
        except _Done as done:
            # The outcome can quote the message (NUL is refused by PostgreSQL, controls by terminals).
            kind, outcome = done.kind, rawmail.storable(done.outcome, 10000)
        # Under the row lock taken above, so the guard cannot lose: it only says so if it did.
        self._finish[kind == "duplicate"].run(
            connection, message.stored.id, new_kind=kind, new_outcome=outcome, new_processed_at=self._now()
        )
        return 1

    def _failure(self, inbound_id: int, exc: Exception) -> int:
        """A failed attempt (rolled back whole): retried later, or classified when retrying cannot help."""
        if isinstance(exc, (SQLAlchemyError, OSError)) and not isinstance(exc, DataError):
            self._failed(inbound_id, exc)  # the database or the disk: retry later
            return 0
        # The bytes themselves (a parser raised, or text the database refuses): retrying cannot help.
        return self._unparseable(inbound_id, exc)

    def _unparseable(self, inbound_id: int, exc: Exception) -> int:
        """Classify a message the parsers choke on: kept, listed, not acted on, not retried.

        Its attempt rolled back whole, so nothing of it is half-done; ``cabinet inbound retry``
        puts it back in line (after a fix, should the fault have been Cabinet's).
        """
        reason = str(exc) if isinstance(exc, UnreadableBounce) else f"{type(exc).__name__}: {exc}"
        reason = rawmail.storable(reason, 2000)  # it may quote the message's own NULs and control characters
        with self._transaction() as s:
            try:
                transition(
                    s, InboundMessage, inbound_id, [InboundState.RECEIVED], InboundState.PROCESSED,
                    kind="unparseable", processed_at=self._now(), attempts=InboundMessage.attempts + 1,
                    last_error=reason, outcome="could not be read (see last_error): kept, not acted on",
                )
            except TransitionLost:  # gone, or another process classified it first
                return 0
            return 1

    def _ready(self, stored: _Stored) -> _Ready:
        """Everything about a message that needs no database: parsed once, its references read, and
        whether the sender of a reply command is who From: says (None when it holds no command)."""
        message = rawmail.parse(stored.raw, self._headers)
        refs = [ref for ref in map(self.recipient_ref, stored.recipients) if ref is not None]
        proof = None
        text = None
        if any(purpose is Purpose.REPLY for purpose, _ in refs):
            senders = [a.lower() for _, a in getaddresses(message.get_all("From", [])) if a]
            if len(senders) == 1:
                text = reply_text(message)  # read once: the forward quotes it too
                if parse_command(text) is not None:
                    proof = prove_sender(stored.raw, message, senders[0], self._config.trusted_authserv_ids,
                                         self._config.dkim_verify, self._dnsfunc)
        return _Ready(stored, message, refs, proof, text=text)

    def _failed(self, inbound_id: int, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        with self._transaction() as s:
            row = s.get(InboundMessage, inbound_id, with_for_update=True)  # read and counted under its lock
            if row is None or row.state != InboundState.RECEIVED:
                log.warning("inbound message %s: processing failed: %s", inbound_id, error, exc_info=exc)
                return
            attempts = row.attempts + 1
            if attempts >= self._config.max_attempts:
                to = InboundState.QUARANTINED
                values: dict[str, Any] = {}
            else:  # still received: the same state, a later attempt
                to = InboundState.RECEIVED
                values = {"next_attempt_at": self._now() + timedelta(seconds=30 * 2 ** (attempts - 1))}
            transition(s, InboundMessage, row.id, [InboundState.RECEIVED], to,
                       attempts=attempts, last_error=error, **values)
            log.warning(
                "inbound message %s (Message-ID %s): processing failed, attempt %s%s: %s",
                row.id, row.message_id or "none", row.attempts,
                " (quarantined; `cabinet inbound retry` after fixing the cause)" if row.state == "quarantined" else "",
                error, exc_info=exc,
            )

    def _not_a_duplicate(self, connection: Connection, row: _Stored) -> None:
        if row.message_id:
            earlier = connection.scalar(_EARLIER, {"message_id": row.message_id, "row_id": row.id})
            if earlier is not None:
                raise _Done("duplicate", f"same Message-ID as inbound message {earlier}; no second effect")

    def _plan(self, reads: BatchReads, ready: _Ready) -> _Plan | None:
        """``_understand`` for the messages whose effect needs no row lock (the commonest: an ordinary
        reply, forwarded), read through ``reads`` before the write transaction; None for a bounce or a command,
        which are decided inside it. Nothing read here is something the write could contradict: an
        email's recipient and references never change, and a forward goes to whoever is staff now."""
        row, message = ready.stored, ready.message
        if any(purpose is Purpose.BOUNCE for purpose, _ in ready.refs):
            return None
        verdict = is_auto_reply(message, row.mail_from)
        if verdict.auto:
            return _Plan("auto-reply", f"automatic reply ({verdict.reason}): recorded, not acted on, not answered")
        reply_refs = [ref for purpose, ref in ready.refs if purpose is Purpose.REPLY]
        if not reply_refs:
            return _Plan("unrouted", "message to a firm address: kept for the firm's staff")
        outbox = reads.answered(reply_refs[0])
        if outbox is None:
            return _Plan("reply", "reply to an email Cabinet no longer knows")
        refused = self._not_from_the_recipient(message, outbox.recipient)
        if refused is not None:
            return _Plan(*refused)
        sender = outbox.recipient.lower()  # From: is the address it was issued to (checked above)
        text = ready.text if ready.text is not None else reply_text(message)
        if outbox.invitation_id is not None and parse_command(text) is not None:
            return None
        subject = str(message.get("Subject", ""))
        excerpt = text.strip()[:EXCERPT]
        event = self._event_values("reply.received", sender, "reply", company_id=outbox.company_id,
                                   firm_id=outbox.firm_id, subject=subject[:200], text=excerpt)
        company = reads.company(outbox.company_id) if outbox.company_id else None
        if company is None or not excerpt:
            return _Plan("reply", "reply recorded (nobody to forward it to)", event)
        context = {"sender": sender, "subject": subject[:200], "text": excerpt, "received_at": self._now()}
        # As in ``_forward``: who the answered email was for decides who hears the reply.
        from_client = (
            outbox.audience == "company_admin" if outbox.audience else outbox.recipient == company.admin_email
        )
        if from_client:
            firm = reads.firm(outbox.firm_id) if outbox.firm_id else None
            if firm is None:
                return _Plan("reply", "reply from the client recorded (no firm to forward it to)", event)
            members = reads.staff(firm.id)
            notices = self._staff_notices(firm.id, firm.name, members, "reply_forwarded",
                                          {"company": company.name, **context}, company.id)
            return _Plan("reply", f"reply from {sender} forwarded to {firm.name}'s staff", event,
                         [self._notifier.prepare(notice) for notice in notices])
        notice = self._company_admin_notice(company, "reply_forwarded", context, firm_id=outbox.firm_id)
        return _Plan("reply", f"reply from {sender} forwarded to {company.admin_email}", event,
                     [self._notifier.prepare(notice)])

    def _understand(self, s: Session, ready: _Ready) -> None:
        row, message = ready.stored, ready.message
        bounce_refs = [ref for purpose, ref in ready.refs if purpose is Purpose.BOUNCE]
        reply_refs = [ref for purpose, ref in ready.refs if purpose is Purpose.REPLY]
        if bounce_refs:
            self._bounce(s, row, message, bounce_refs[0])
        verdict = is_auto_reply(message, row.mail_from)
        if verdict.auto:
            raise _Done("auto-reply", f"automatic reply ({verdict.reason}): recorded, not acted on, not answered")
        if reply_refs:
            self._reply(s, row, message, reply_refs[0], ready.proof)
        raise _Done("unrouted", "message to a firm address: kept for the firm's staff")

    # -- bounces -----------------------------------------------------------------------

    def _bounce(self, s: Session, row: _Stored, message: EmailMessage, ref: str) -> None:
        outbox = s.scalar(select(OutboxMessage).where(OutboxMessage.ref == ref))
        if outbox is None:
            raise _Done("bounce", "bounce for an email Cabinet no longer knows")
        bounce = parse_bounce(message)
        if bounce is None:
            verdict = is_auto_reply(message, row.mail_from)
            if verdict.auto:
                raise _Done("auto-reply", f"automatic reply to a bounce address ({verdict.reason}): ignored")
            raise _Done("unknown", "message to a bounce address that is not a bounce: ignored")
        # Anyone can write to a bounce+ address (it is every email's envelope sender): a report acts
        # only when it is about the very email its address names, recipient and Message-ID alike.
        mismatch = _mismatch(bounce, outbox)
        if mismatch:
            raise _Done("bounce", f"did not match the message its address names ({mismatch}): nothing changed")
        if not bounce.permanent:
            raise _Done("bounce", f"delivery of {outbox.recipient} delayed ({bounce.reason}); still trying")
        raise _Done("bounce", self._undeliverable.bounced(s, outbox, bounce.reason, status=bounce.status))

    # -- replies ------------------------------------------------------------------------

    def _not_from_the_recipient(self, message: EmailMessage, recipient: str) -> tuple[str, str] | None:
        """(kind, outcome) when a reply may not speak through its reply+ address; None when it may.

        A reply+ address is in every email's Reply-To, so anyone can write to it: only the party it was
        issued to may speak through it. Kept and listed for operators; nobody is told.
        """
        senders = [a.lower() for _, a in getaddresses(message.get_all("From", [])) if a]
        sender = senders[0] if len(senders) == 1 else ""
        if sender == self._own:
            return "reply", "message from Cabinet itself: ignored (no loops)"
        if sender != recipient.lower():
            return ("unverified reply", f"From: {sender or 'missing or several addresses'} is not "
                    f"{recipient}, to whom this reply address was issued: recorded, not forwarded, not acted on")
        return None

    def _reply(
        self, s: Session, row: _Stored, message: EmailMessage, ref: str, proof: SenderVerdict | None
    ) -> None:
        outbox = s.scalar(select(OutboxMessage).where(OutboxMessage.ref == ref))
        if outbox is None:
            raise _Done("reply", "reply to an email Cabinet no longer knows")
        refused = self._not_from_the_recipient(message, outbox.recipient)
        if refused is not None:
            raise _Done(*refused)
        sender = outbox.recipient.lower()  # From: is the address it was issued to (checked above)
        text = reply_text(message)
        command = parse_command(text)
        invitation = s.get(Invitation, outbox.invitation_id) if outbox.invitation_id else None
        if command is not None and invitation is not None:
            self._command(s, row, sender, invitation, command, proof)
        self._forward(s, outbox, sender, str(message.get("Subject", "")), text)

    def _command(
        self, s: Session, row: _Stored, sender: str, invitation: Invitation, command: Command,
        proof: SenderVerdict | None,
    ) -> None:
        company = invitation.company
        if sender != invitation.email:
            self._event(s, "reply.command_refused", sender or row.mail_from, "reply", company_id=company.id,
                        invitation_id=invitation.id, reason="sender is not the invited address")
            raise _Done("command", f"{command.action} from {sender or 'an unknown sender'}, not the invited "
                                   f"address {invitation.email}: not executed")
        # Proven (or not) by ``_prove`` before this transaction began.
        proof = proof or SenderVerdict(False, "none", "sender not checked")
        user = s.scalar(select(User).where(User.email == sender))
        link = self._links.invitation(self._signer.sign(Purpose.INVITE, [invitation.id, invitation.nonce]))
        if not proof.proven or user is None:
            reason = "unverified" if not proof.proven else "no_account"
            if self._answered_lately(s, invitation):
                raise _Done("command", f"{command.action} not executed ({reason}: {proof.detail}); the link was "
                                       f"already emailed within the last {self._answer_interval}: not emailed again")
            self._tell_sender(s, invitation, "reply_needs_link", {"url": link, "action": command.action, "reason": reason})
            raise _Done("command", f"{command.action} not executed ({reason}: {proof.detail}); the link was emailed")
        firm_id = None
        if command.action == "accept":
            firms = s.scalars(select(Firm).join(Membership).where(Membership.user_id == user.id)).all()
            if command.firm is not None:
                named = [f for f in firms if f.name_key == name_key(command.firm)]
                firm_id = named[0].id if named else None
            elif len(firms) == 1:
                firm_id = firms[0].id
            if firm_id is None and firms:
                self._tell_sender(
                    s, invitation, "reply_choose_firm", {"url": link, "firms": sorted(f.name for f in firms)}
                )
                raise _Done("command", "accept without a firm this accountant belongs to: the firm picker link was emailed")
        try:
            # A savepoint: a refusal leaves nothing half-done in this message's transaction.
            with s.begin_nested():
                if command.action == "accept":
                    result = self._roster.accept_in(s, invitation, user.id, firm_id, "reply")
                    outcome = f"invitation {invitation.id} accepted by reply for {result.client.firm}"
                else:
                    self._roster.decline_in(s, invitation, user.id, "reply")
                    outcome = f"invitation {invitation.id} declined by reply"
        except CabinetError as exc:
            raise _Done("command", f"{command.action} not executed: {exc}") from None
        raise _Done("command", outcome)

    def _answered_lately(self, s: Session, invitation: Invitation) -> bool:
        """Whether an unproven command about ``invitation`` was already answered within the answer interval.

        Forged replies cost their sender nothing; each answer is an email from Cabinet to the
        invitee. The invitation row is locked first, so two instances counting at once do not
        both answer.
        """
        s.get(Invitation, invitation.id, with_for_update=True)
        answered = s.scalar(
            select(func.count(OutboxMessage.id)).where(
                OutboxMessage.invitation_id == invitation.id,
                OutboxMessage.kind == "reply_needs_link",
                OutboxMessage.created_at > self._now() - self._answer_interval,
            )
        )
        return bool(answered)

    def _tell_sender(self, s: Session, invitation: Invitation, template: str, context: dict[str, Any]) -> None:
        company = invitation.company
        accountant = s.scalar(select(User).where(User.email == invitation.email))
        self._notifier.queue(
            s,
            Notice(
                template=template, to=invitation.email, to_name=accountant.name if accountant else "",
                locale=accountant.locale if accountant else company.admin_locale,
                timezone=accountant.timezone if accountant else company.admin_timezone,
                context={"company": company.name, **context}, invitation_id=invitation.id, company_id=company.id,
                audience="accountant",
            ),
        )

    def _forward(self, s: Session, outbox: OutboxMessage, sender: str, subject: str, text: str) -> None:
        """An ordinary reply: record it on the client's activity and pass it to the other side, once."""
        company = s.get(Company, outbox.company_id) if outbox.company_id else None
        excerpt = text.strip()[:EXCERPT]
        self._event(s, "reply.received", sender, "reply", company_id=outbox.company_id, firm_id=outbox.firm_id,
                    subject=subject[:200], text=excerpt)
        if company is None or not excerpt:
            raise _Done("reply", "reply recorded (nobody to forward it to)")
        context = {"sender": sender, "subject": subject[:200], "text": excerpt, "received_at": self._now()}
        # Who the answered email was for, as recorded when it was queued; rows queued before
        # that was recorded fall back to comparing addresses.
        from_client = (
            outbox.audience == "company_admin" if outbox.audience else outbox.recipient == company.admin_email
        )
        if from_client:
            # The client answered: their firm's staff hear it.
            firm = s.get(Firm, outbox.firm_id) if outbox.firm_id else None
            if firm is None:
                raise _Done("reply", "reply from the client recorded (no firm to forward it to)")
            self._notify_staff(s, firm, "reply_forwarded", {"company": company.name, **context}, company.id)
            raise _Done("reply", f"reply from {sender} forwarded to {firm.name}'s staff")
        self._notify_company_admin(s, company, "reply_forwarded", context, firm_id=outbox.firm_id)
        raise _Done("reply", f"reply from {sender} forwarded to {company.admin_email}")

    # -- operators ------------------------------------------------------------------------

    def list(self, state: str | None = None) -> list[InboundView]:
        """Every message's metadata; the stored bodies are not read (only their length)."""
        columns = [c for c in InboundMessage.__table__.columns if c.key != "raw"]
        with self._sessions() as s:
            query = select(*columns, func.length(InboundMessage.raw).label("size")).order_by(InboundMessage.id)
            if state:
                query = query.where(InboundMessage.state == state)
            return [
                InboundView(
                    r.id, r.received_at, r.mail_from, tuple(json.loads(r.recipients)), r.message_id, r.state,
                    r.kind, r.outcome, r.attempts, r.last_error, int(r.size or 0),
                )
                for r in s.execute(query)
            ]

    def show(self, inbound_id: int) -> tuple[InboundView, bytes]:
        with self._sessions() as s:
            row = s.get(InboundMessage, inbound_id)
            if row is None:
                raise NotFound("inbound.not_found", id=inbound_id)
            return self._view(row), row.raw

    def retry(self, inbound_id: int) -> InboundView:
        """Put a quarantined (or failing) message back in line, with a fresh count of attempts."""
        with self._transaction() as s:
            row = s.get(InboundMessage, inbound_id)
            if row is None:
                raise NotFound("inbound.not_found", id=inbound_id)
            retryable = [InboundState.QUARANTINED, InboundState.RECEIVED]
            if row.kind == "unparseable":  # read again after a fix: processed, but never acted on
                retryable.append(InboundState.PROCESSED)
            try:
                transition(s, InboundMessage, row.id, retryable, InboundState.RECEIVED,
                           where=[InboundMessage.kind == row.kind] if row.kind else [InboundMessage.kind.is_(None)],
                           attempts=0, next_attempt_at=self._now(), last_error=None, kind=None, outcome=None)
            except TransitionLost as lost:
                raise InvalidState("inbound.not_retryable", id=inbound_id, state=lost.current) from None
            return self._view(row)

    def _view(self, row: InboundMessage) -> InboundView:
        return InboundView(
            row.id, row.received_at, row.mail_from, tuple(json.loads(row.recipients)), row.message_id, row.state,
            row.kind, row.outcome, row.attempts, row.last_error, len(row.raw),
        )
