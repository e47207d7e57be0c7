"""Foreground work arriving, and background work giving way to it.

Someone waits for an SMTP store's 250 or an accept's 303; nobody waits for
inbound processing or an outbox email a few hundred milliseconds. So while
foreground work keeps arriving, background work (which shares the one core
and SQLite's one writer with it) holds back until ``lull`` seconds pass
without an arrival, but never more than ``max_wait`` seconds at a time: under
arrivals that never stop, background work still gets a batch in at least that
often, so its backlog drains.
"""

from __future__ import annotations

import asyncio
import time


class Arrivals:
    """When foreground work last arrived, and the waits for a lull in it (from a thread or the loop)."""

    def __init__(self, lull: float = 0.05, max_wait: float = 1.0) -> None:
        self._lull = lull
        self._max_wait = max_wait
        self._last = float("-inf")

    def arrived(self) -> None:
        self._last = time.monotonic()

    def _pause(self, deadline: float) -> float:
        """Seconds still to hold back before ``deadline``; 0: go now."""
        return max(0.0, min(self._last + self._lull, deadline) - time.monotonic())

    def wait_for_lull(self) -> None:
        """Block (in a background worker's thread) until arrivals pause, or ``max_wait`` has passed."""
        deadline = time.monotonic() + self._max_wait
        while (pause := self._pause(deadline)) > 0:
            time.sleep(pause)

    async def lull(self) -> None:
        """``wait_for_lull`` on the event loop (the outbox worker's ``give_way``)."""
        deadline = time.monotonic() + self._max_wait
        while (pause := self._pause(deadline)) > 0:
            await asyncio.sleep(pause)
