"""``ThreadReads``: PostgreSQL's page reads in threads, each caller given its own result or error, the
results that came in while the loop was busy handed over in one wake-up."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from daemon.thread_reads import ThreadReads
from tests.conftest import wait_until


def _value(n: int) -> int:
    if n % 7 == 3:
        raise LookupError(f"no row {n}")
    return n * n


def test_each_caller_gets_its_own_result_or_error() -> None:
    async def main() -> list[Any]:
        reads = ThreadReads(4)
        try:
            return await asyncio.gather(*(reads.run(_value, n) for n in range(60)), return_exceptions=True)
        finally:
            reads.close()

    for n, outcome in enumerate(asyncio.run(main())):
        if n % 7 == 3:
            assert isinstance(outcome, LookupError) and str(outcome) == f"no row {n}"
        else:
            assert outcome == n * n


def test_results_in_while_the_loop_was_busy_come_back_in_one_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 20

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        wake = loop.call_soon_threadsafe

        def counted(*args: Any) -> Any:
            nonlocal wake_ups
            wake_ups += 1
            return wake(*args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
        reads = ThreadReads(calls)
        try:
            returned = threading.Semaphore(0)

            def read(n: int) -> int:
                returned.release()
                return n

            futures = [reads.run(read, n) for n in range(calls)]
            # The loop busy (blocked here) while every read returns and its thread hands the result over.
            for _ in range(calls):
                returned.acquire()
            wait_until(lambda: len(reads._done) == calls, what="every result to be handed over")
            return list(await asyncio.gather(*futures)), wake_ups
        finally:
            reads.close()

    results, wake_ups = asyncio.run(main())
    assert results == list(range(calls))
    assert wake_ups == 1  # to_thread wakes the loop once per result


def test_a_caller_gone_meanwhile_is_skipped_and_the_others_answered() -> None:
    async def main() -> int:
        reads = ThreadReads(1)
        try:
            release = threading.Event()
            gone = reads.run(release.wait)
            kept = reads.run(_value, 5)
            gone.cancel()  # its request went away while it was being read
            release.set()
            return await kept
        finally:
            reads.close()

    assert asyncio.run(main()) == 25


def test_close_ends_the_threads() -> None:
    async def main() -> list[threading.Thread]:
        reads = ThreadReads(3)
        assert await reads.run(_value, 2) == 4
        reads.close()
        return reads._threads

    threads = asyncio.run(main())
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
