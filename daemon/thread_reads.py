"""PostgreSQL's hot reads in threads, their results handed back to the event loop together.

A page's read is a network round trip, which must not block the event loop (``daemon.web.context.read``).
``asyncio.to_thread`` costs more than the read's own Python work around it: a copied context, a
``concurrent.futures.Future`` (its lock, condition and callbacks) chained to the loop's future, and a
write to the loop's self-pipe for every result. Here a call is one item on a queue; a thread appends
the result to a deque, and only the first result the loop has not yet taken wakes it
(``call_soon_threadsafe``): the results that come in meanwhile are handed over in the same callback.
In a loop of 32 callers over 20 threads, a trivial call cost 28-29 us of CPU through ``to_thread``
and 10-11 us here.

No context variables are copied: the reads use none.

SQLite's accepts have a thread of their own the same way (``daemon.accepts``): their batches are written
one after another by the one writer, and the hop to a thread is a share of each batch of one or two.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from queue import SimpleQueue
from typing import Any, Callable, TypeVar


T = TypeVar("T")

_Call = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class ThreadReads:
    """``run`` calls a blocking function in one of ``threads`` threads; bound to the loop it is made on."""

    def __init__(self, threads: int, name: str = "cabinet-read") -> None:
        self._loop = asyncio.get_running_loop()
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        self._done: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._wake_queued = False  # a hand-over is queued on the loop and has not begun yet
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((future, fn, args))
        return future

    def serves_running_loop(self) -> bool:
        """Whether the running event loop is the one its results are handed to."""
        return asyncio.get_running_loop() is self._loop

    def close(self, wait: bool = False) -> None:
        """The threads end once they finish what they are reading (none waits for more); ``wait``: return
        once they have."""
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        calls, done = self._calls, self._done
        while (call := calls.get()) is not None:
            future, fn, args = call
            try:
                done.append((future, fn(*args), None))
            except BaseException as exc:  # noqa: BLE001 - the caller's: raised where it awaits
                done.append((future, None, exc))
            del call, future, fn, args  # nothing of this call kept alive while the thread waits
            with self._lock:
                if self._wake_queued:
                    continue  # the queued hand-over takes this result too
                self._wake_queued = True
            try:
                self._loop.call_soon_threadsafe(self._hand_over)
            except RuntimeError:  # the loop is closed: nobody waits for any result
                return

    def _hand_over(self) -> None:
        """On the loop: every result in so far to its caller. A result appended after the flag is cleared
        is taken here or queues a hand-over of its own (which may then find nothing)."""
        with self._lock:
            self._wake_queued = False
        done = self._done
        while done:
            future, result, exc = done.popleft()
            if future.cancelled():  # its request went away meanwhile
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)

