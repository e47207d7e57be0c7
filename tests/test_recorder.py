"""BatchRecorder: "sent" marks in batches. What comes in during a write waits for a full batch, its timer or
``drain`` (a write per few emails was a transaction per few emails); with ``max_age=0`` (the SMTP listener's
stores, which someone waits for) it is written right after, as before. Every item gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from mailer.recorder import BatchRecorder


class Ledger:
    """A ``record`` function that writes down each batch, and can hold a write until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def record(self, items: Sequence[int]) -> list[int]:
        self.started.set()
        assert self.release.wait(timeout=600)
        self.batches.append(list(items))
        return [item * 10 for item in items]


async def _until(condition: threading.Event) -> None:
    while not condition.is_set():
        await asyncio.to_thread(condition.wait, 1.0)


def test_what_comes_in_during_a_write_waits_for_a_full_batch_or_drain() -> None:
    async def scenario() -> None:
        ledger = Ledger()
        recorder: BatchRecorder[int, int] = BatchRecorder(ledger.record, size=3, max_age=3600)
        ledger.release.clear()
        first = [recorder.add(i) for i in range(3)]  # a full batch: written at once
        await _until(ledger.started)
        later = [recorder.add(i) for i in (3, 4)]  # while the write runs
        ledger.release.set()
        assert await asyncio.gather(*first) == [0, 10, 20]
        await asyncio.sleep(0)
        assert ledger.batches == [[0, 1, 2]]  # 3 and 4 wait: not a batch yet, and their timer is an hour
        assert not any(future.done() for future in later)
        later.append(recorder.add(5))  # now a full batch
        assert await asyncio.gather(*later) == [30, 40, 50]
        assert ledger.batches == [[0, 1, 2], [3, 4, 5]]
        last = recorder.add(6)
        await recorder.drain()
        assert last.result() == 60
        assert ledger.batches[-1] == [6]

    asyncio.run(scenario())


def test_a_partial_batch_is_written_by_its_timer() -> None:
    async def scenario() -> None:
        ledger = Ledger()
        recorder: BatchRecorder[int, int] = BatchRecorder(ledger.record, size=64, max_age=0.01)
        assert await asyncio.gather(recorder.add(1), recorder.add(2)) == [10, 20]
        assert ledger.batches == [[1, 2]]

    asyncio.run(scenario())


def test_with_max_age_zero_what_comes_in_during_a_write_is_written_right_after() -> None:
    async def scenario() -> None:
        ledger = Ledger()
        recorder: BatchRecorder[int, int] = BatchRecorder(ledger.record, size=64, max_age=0)
        ledger.release.clear()
        first = recorder.add(1)
        await _until(ledger.started)
        more = [recorder.add(2), recorder.add(3)]
        ledger.release.set()
        assert await first == 10 and await asyncio.gather(*more) == [20, 30]
        assert ledger.batches == [[1], [2, 3]]

    asyncio.run(scenario())


class HeldFirst(Ledger):
    """Holds only the first batch's write until released: a second writer's batch can pass it."""

    def __init__(self) -> None:
        super().__init__()
        self._first = True
        self._lock = threading.Lock()

    def record(self, items: Sequence[int]) -> list[int]:
        with self._lock:
            first, self._first = self._first, False
        if not first:
            self.batches.append(list(items))
            return [item * 10 for item in items]
        return super().record(items)


def test_with_two_writers_a_batch_is_written_while_another_is_held() -> None:
    """``writers=2`` (PostgreSQL's accepts, whose batches mostly wait for round trips): what comes in while
    one batch is written goes out in a second batch at once, not after the first."""
    async def scenario() -> None:
        ledger = HeldFirst()
        recorder: BatchRecorder[int, int] = BatchRecorder(ledger.record, size=64, max_age=0, writers=2)
        ledger.release.clear()
        first = recorder.add(1)
        await _until(ledger.started)
        second = [recorder.add(2), recorder.add(3)]
        # With one writer these would wait for the held first batch (the bound only turns that into a failure).
        assert await asyncio.wait_for(asyncio.gather(*second), 120) == [20, 30]
        assert not first.done()
        ledger.release.set()
        assert await first == 10
        assert ledger.batches == [[2, 3], [1]]
        await recorder.drain()

    asyncio.run(scenario())
