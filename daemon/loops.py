"""Background loops of `cabinet serve`: run a blocking job off the event loop, again and again."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from daemon.faults import storage_fault

log = logging.getLogger(__name__)


class Repeater:
    """Runs ``job`` in a worker thread every ``interval`` seconds, or sooner when woken.

    ``after`` is called (on the loop) with the job's result, e.g. to wake the
    outbox worker when the job queued mail. When ``again`` says so of a result
    (a pass that did work may have left more), the job runs again at once
    instead of waiting: a backlog is worked through, not one pass per interval.
    """

    def __init__(
        self, name: str, job: Callable[[], Any], interval: float, after: Callable[[Any], None] | None = None,
        again: Callable[[Any], bool] | None = None,
    ) -> None:
        self.name = name
        self._job = job
        self._interval = interval
        self._after = after
        self._again = again
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the current pass, then return from ``run``."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                result = await asyncio.to_thread(self._job)
                if self._after is not None:
                    self._after(result)
                if self._again is not None and self._again(result):
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database hiccup must not stop the loop for good
                fault = storage_fault(exc)
                if fault is not None:  # expected while storage is down: one line, not a traceback a pass
                    log.error("%s: %s; retrying", self.name, fault)
                else:
                    log.exception("%s failed; retrying", self.name)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            except TimeoutError:
                pass
