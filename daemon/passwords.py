"""Password hashing with argon2id (argon2-cffi's defaults are argon2id).

A verify costs about 100 ms of CPU, so the async helpers run it in a worker
thread: the event loop keeps serving link clicks meanwhile.
"""

from __future__ import annotations

import asyncio
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from daemon.errors import InvalidInput

MIN_LENGTH = 10


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()

    @cached_property
    def _decoy(self) -> str:
        # A real hash to verify against when the account does not exist, so a
        # wrong address takes as long as a wrong password (no user enumeration).
        return self._hasher.hash("decoy password, never valid")

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
        return await asyncio.to_thread(self.verify, stored_hash, password)
