"""Foreground work arriving, and background work giving way to it.

Someone waits for an SMTP store's 250 or an accept's 303; nobody waits for
inbound processing or an outbox email a few hundred milliseconds. So while
foreground work keeps arriving, background work (which shares the one core
and SQLite's one writer with it) holds back until ``lull`` seconds pass
without an arrival, but never more than ``max_wait`` seconds at a time: under
arrivals that never stop, background work still gets a batch in at least that
often, so its backlog drains.

Work that says when it is answered (``answered``, the accepts) counts as
arriving until then: a client on a kept-alive connection sends its next
request only once answered, so while answers are slow (a commit waiting for
the disk) nothing arrives, and a lull measured from arrivals alone let the
outbox worker start a batch of deliveries into the very requests it slowed.
"""

from __future__ import annotations

import asyncio
import time


class Arrivals:
    """When foreground work last arrived (or was answered), how much is being served, and the waits for a
    lull in it (from a thread or the loop)."""

    def __init__(self, lull: float = 0.05, max_wait: float = 1.0) -> None:
        self._lull = lull
        self._max_wait = max_wait
        self._last = float("-inf")
        self._serving = 0  # arrived, ``answered`` not called yet

    def arrived(self) -> None:
        self._last = time.monotonic()

    def serving(self) -> None:
        """Foreground work arrived that will say when it is ``answered``; a lull starts no sooner."""
        self._serving += 1
        self._last = time.monotonic()

    def answered(self) -> None:
        """The end of work ``serving`` announced: its client's next request may follow within the lull."""
        self._serving -= 1
        self._last = time.monotonic()

    def busy(self) -> bool:
        """Foreground work is being served, or arrived less than ``lull`` seconds ago."""
        return self._serving > 0 or time.monotonic() < self._last + self._lull

    def _pause(self, deadline: float) -> float:
        """Seconds still to hold back before ``deadline`` (while work is served: a lull's length at most,
        then look again); 0: go now."""
        until = self._last + self._lull
        if self._serving:
            until = max(until, time.monotonic() + self._lull)
        return max(0.0, min(until, deadline) - time.monotonic())

    def wait_for_lull(self) -> bool:
        """Block (in a background worker's thread) until arrivals pause, or ``max_wait`` has passed.
        True: a lull; False: arrivals went on, and background work takes its turn anyway."""
        deadline = time.monotonic() + self._max_wait
        while (pause := self._pause(deadline)) > 0:
            time.sleep(pause)
        return not self.busy()

    async def lull(self) -> bool:
        """``wait_for_lull`` on the event loop (the outbox worker's ``give_way``)."""
        deadline = time.monotonic() + self._max_wait
        while (pause := self._pause(deadline)) > 0:
            await asyncio.sleep(pause)
        return not self.busy()
