"""Accepting an invitation: the one entry point an adapter awaits (``Accepts.accept``).

An accept is planned on a read (``Roster.plan_accept``: what it decides on, its emails prepared),
then written by Core statements that re-check what the read relied on. The accepts in flight at once
are written together (``Roster.accept_planned_many``): one thread hop, one write transaction, one
commit, each accept in a SAVEPOINT of its own, so one whose rows changed since its plan (a revoke, a
second accept of the same invitation, another instance's accept) is undone alone and decided again in
a transaction of its own (``Roster.accept_unplanned``), and one that fails fails alone. Nobody is
answered before the commit that holds their accept.

Where the plan is read depends on the database. SQLite's read takes no lock a writer holds and is over
sooner than a thread hop: it runs on the event loop, and only the write goes to the batch, on a thread
the accepts keep for their batches (one writer writes them one after another), which ``close`` ends:
``asyncio.to_thread``'s hop (a copied context, a concurrent future chained to the loop's, a wake-up
per result) cost more than twice a queue's (``daemon.thread_reads``), for batches of one or two. A PostgreSQL
read is a network round trip, which must not block the event loop: the batch's thread reads every plan
then writes them, so N accepts in flight cost one thread hop and one commit, not N of each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Sequence

from mailer.recorder import BatchRecorder
from daemon.arrivals import Arrivals
from daemon.roster import AcceptPlan, AcceptResult, Roster
from daemon.thread_reads import ThreadReads

# Accepts written in one transaction at most: a commit's wait shared by many, a transaction still short.
BATCH = 64
# PostgreSQL: batches planned and written at once, each in its own thread. A batch's thread spends most
# of its time waiting for round trips (the plans' reads, the statements, the commit), which several
# overlap; each holds one pooled connection (POSTGRESQL_ENGINE_OPTIONS) and one kept read connection.
# SQLite has one writer: its batches are written one at a time.
POSTGRESQL_WRITERS = 8
# Background work (the outbox worker) gives way to accepts: it waits until none is in flight and none has
# come in or been answered for LULL seconds, but never more than MAX_WAIT (``daemon.arrivals``).
LULL = 0.05
MAX_WAIT = 1.0


@dataclass(frozen=True)
class _Request:
    token: str
    user_id: int
    firm_id: int | None
    channel: str


@dataclass(frozen=True)
class _Again:
    """Decide this accept again in a transaction of its own; ``refused``: its plan found a refusal."""

    refused: bool


_Outcome = AcceptResult | Exception | _Again
_Planned = tuple[AcceptPlan, str]  # a plan and its channel
_Written = AcceptResult | Exception | None  # None: rows changed since the plan, decided again


class Accepts:
    """``accept`` for every adapter, with the batches of accepts in flight behind it."""

    def __init__(self, roster: Roster, plan_on_loop: bool, batch: int = BATCH, lull: float = LULL,
                 max_wait: float = MAX_WAIT) -> None:
        self._roster = roster
        self._plan_on_loop = plan_on_loop
        self._arrivals = Arrivals(lull, max_wait)
        # SQLite's batches' thread, made on the event loop that writes the first (another loop, another).
        self._batch_thread: ThreadReads | None = None
        # max_age=0: a batch is written at once; what comes in while it is written makes the next one.
        self._planned: BatchRecorder[tuple[AcceptPlan, str], AcceptResult | Exception | None] = BatchRecorder(
            self._write_planned, size=batch, max_age=0, hop=self._on_batch_thread)
        self._requested: BatchRecorder[_Request, _Outcome] = BatchRecorder(
            self._plan_and_write, size=batch, max_age=0, writers=POSTGRESQL_WRITERS)

    async def accept(self, token: str, user_id: int, firm_id: int | None, channel: str = "link") -> AcceptResult:
        """Accept the invitation ``token`` names for ``user_id`` (in ``firm_id``, or their one firm).

        Returns once the accept is durable; raises what the accept is refused with (the same errors as
        ``Roster.accept_invitation``), or the error its write or commit failed with."""
        self._arrivals.serving()
        try:
            return await self._accept(token, user_id, firm_id, channel)
        finally:
            self._arrivals.answered()

    async def _accept(self, token: str, user_id: int, firm_id: int | None, channel: str) -> AcceptResult:
        outcome: _Outcome
        if self._plan_on_loop:
            plan = self._roster.plan_accept(token, user_id, firm_id)
            if plan is None:
                outcome = _Again(refused=True)
            else:
                written = await self._planned.add((plan, channel))
                outcome = _Again(refused=False) if written is None else written
        else:
            outcome = await self._requested.add(_Request(token, user_id, firm_id, channel))
        if isinstance(outcome, _Again):
            # A refusal (its exact words), or rows changed since the plan: decided in its own transaction.
            return await asyncio.to_thread(
                self._roster.accept_unplanned, token, user_id, firm_id, outcome.refused, channel)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def wait_for_lull(self) -> bool:
        """Return once no accept is in flight and none has come in or been answered for ``lull`` seconds
        (True), or after ``max_wait`` at most (False: accepts went on). The outbox worker's ``give_way``:
        whoever accepts waits for the 303, nobody for the emails."""
        return await self._arrivals.lull()

    def busy(self) -> bool:
        """An accept is in flight, or came in or was answered less than ``lull`` seconds ago (the outbox
        worker stops starting emails)."""
        return self._arrivals.busy()

    def close(self) -> None:
        """End the batches' thread, once the batch it is writing (if any) is written."""
        thread, self._batch_thread = self._batch_thread, None
        if thread is not None:
            thread.close(wait=True)

    def _on_batch_thread(self, write: Callable[[Sequence[_Planned]], list[_Written]],
                         batch: Sequence[_Planned]) -> asyncio.Future[list[_Written]]:
        """``write(batch)`` on the batches' thread (on the loop; the future resolves on it)."""
        thread = self._batch_thread
        if thread is None or not thread.serves_running_loop():
            if thread is not None:  # the loop it served has gone (a test's asyncio.run): nothing waits on it
                thread.close()
            thread = self._batch_thread = ThreadReads(1, name="cabinet-accepts")
        return thread.run(write, batch)

    def _write_planned(self, items: Sequence[tuple[AcceptPlan, str]]) -> list[AcceptResult | Exception | None]:
        return self._roster.accept_planned_many(items)

    def _plan_and_write(self, requests: Sequence[_Request]) -> list[_Outcome]:
        """In the batch's thread: each request's plan (a refusal or a bad link is that request's outcome),
        then every plan's write in one transaction."""
        outcomes: list[_Outcome | None] = [None] * len(requests)
        planned: list[tuple[int, tuple[AcceptPlan, str]]] = []
        for n, request in enumerate(requests):
            try:
                plan = self._roster.plan_accept(request.token, request.user_id, request.firm_id)
            except Exception as exc:  # noqa: BLE001 - this request's outcome (a tampered link), not the batch's
                outcomes[n] = exc
                continue
            if plan is None:
                outcomes[n] = _Again(refused=True)
            else:
                planned.append((n, (plan, request.channel)))
        if planned:
            written = self._roster.accept_planned_many([item for _, item in planned])
            for (n, _), result in zip(planned, written, strict=True):
                outcomes[n] = _Again(refused=False) if result is None else result
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(requests)  # every request was given its outcome above
        return done
