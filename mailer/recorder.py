"""Results recorded in batches: many "sent" marks in one transaction.

Each email's "sent" used to be its own transaction, and so its own fsync
(SQLite) or commit round trip (PostgreSQL): half of outbound's time. Nobody
waits for that mark (the relay has the email; only a crash before the mark
means one more send of the same Message-ID after the lease, as before), so
the worker hands results to a ``BatchRecorder``, which writes them together:
when ``size`` have piled up, when the oldest is ``max_age`` seconds old, or
when the worker has nothing else to do (``drain``); what comes in during a
write waits for its own timer unless it fills a batch (writing it at once made
batches of four: a transaction per four emails). With ``max_age=0``, at once,
the items that come in meanwhile making the next batch (the SMTP listener's
stores: group commit for whoever waits). ``record`` is called in a
worker thread with a batch and returns one outcome per item, so one bad row
is that row's outcome, never the batch's. ``writers`` (default 1) lets that many batches be written
at once, each in its own thread: on PostgreSQL a batch's write waits mostly for round trips, which
several batches in flight overlap (the accepts of ``daemon.accepts``). ``hop`` takes a batch to its
thread instead of ``asyncio.to_thread`` (SQLite's accepts: one thread of their own, ``daemon.accepts``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class BatchRecorder(Generic[Item, Outcome]):
    def __init__(self, record: Callable[[Sequence[Item]], list[Outcome]], size: int = 64,
                 max_age: float = 0.2, writers: int = 1,
                 hop: Callable[[Callable[[Sequence[Item]], list[Outcome]], Sequence[Item]],
                               Awaitable[list[Outcome]]] | None = None) -> None:
        self._record = record
        self._size = size
        self._max_age = max_age
        self._writers = writers
        self._hop = hop if hop is not None else asyncio.to_thread
        self._pending: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._writing: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: Item) -> asyncio.Future[Outcome]:
        """Queue ``item``; the future resolves to its outcome once its batch is written."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._size or self._max_age <= 0:
            self._write()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_age, self._write)
        return future

    def _write(self, everything: bool = False) -> None:
        """Start writing what is pending, unless ``writers`` writes are under way (they pick the rest up
        when done)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if len(self._writing) < self._writers and self._pending:
            task = asyncio.get_running_loop().create_task(self._write_all(everything))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    def _due(self, everything: bool) -> bool:
        """Whether what is pending is written now, or waits for its timer."""
        return bool(self._pending) and (everything or self._max_age <= 0 or len(self._pending) >= self._size)

    async def _write_all(self, everything: bool = False) -> None:
        try:
            first = True
            while self._pending and (first or self._due(everything)):
                first = False
                batch, self._pending = self._pending[:self._size], self._pending[self._size:]
                try:
                    outcomes = await self._hop(self._record, [item for item, _ in batch])
                except BaseException as exc:  # the futures carry it to whoever awaits them
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
            if self._pending and self._timer is None:  # not a full batch yet: it waits for its timer
                self._timer = asyncio.get_running_loop().call_later(self._max_age, self._write)
        finally:
            self._writing.discard(asyncio.current_task())

    async def drain(self) -> None:
        """Write everything pending now and wait until it is written."""
        self._write(everything=True)
        while self._writing:
            await asyncio.shield(next(iter(self._writing)))
            self._write(everything=True)
