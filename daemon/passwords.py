"""Password hashing with argon2id (argon2-cffi's defaults are argon2id).

A verify costs about 100 ms of CPU. The async path runs it on a small pool of
its own with a bounded number of waiting checks: a flood of sign-in attempts
fills that pool and is refused with "busy", and never takes the threads the
database calls, the SMTP store or ``/readyz`` run on.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from typing import Any, Callable, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from daemon.errors import Busy, InvalidInput

MIN_LENGTH = 10
T = TypeVar("T")


class PasswordExecutor:
    """A ThreadPoolExecutor whose queue is bounded: beyond ``workers + waiting`` checks it refuses."""

    def __init__(self, workers: int = 2, waiting: int = 8) -> None:
        self.capacity = workers + waiting
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._slots = threading.BoundedSemaphore(self.capacity)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if not self._slots.acquire(blocking=False):
            raise Busy("signin.busy")
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        # Freed when the thread is done, not when the caller stops waiting: a
        # cancelled request must not let more work in than there are slots.
        future.add_done_callback(lambda _: self._slots.release())
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, executor: PasswordExecutor | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self.executor = executor or PasswordExecutor()

    @cached_property
    def _decoy(self) -> str:
        # A real hash, with the hasher's own parameters, to verify against when
        # the account does not exist: a wrong address costs as much as a wrong
        # password (no user enumeration by timing).
        return self._hasher.hash("decoy password, never valid")

    def warm(self) -> None:
        """Compute the decoy now, so the first unknown address is not slower than the rest."""
        _ = self._decoy

    def hash(self, password: str) -> str:
        if len(password) < MIN_LENGTH:
            raise InvalidInput("password.too_short", minimum=MIN_LENGTH)
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._decoy, password) and stored_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    async def verify_async(self, stored_hash: str | None, password: str) -> bool:
        """``verify`` on the password pool; raises ``Busy`` when that pool is full."""
        return await self.executor.run(self.verify, stored_hash, password)

    def close(self) -> None:
        self.executor.close()
