"""New browsers' ids, read from the kernel's random source a batch at a time.

Every link's first click is a new browser with a form to show, so it gets an id (signed into its
cookie and its CSRF token). ``os.urandom`` per id is a ``getrandom`` system call per page, and system
calls are the dearest thing a page does on a virtual machine: one call reads the random bytes of
``BATCH`` ids. Each id is handed out once. A forked child forgets the ids its parent read
(``os.register_at_fork``), so no two processes hand out the same one.
"""

from __future__ import annotations

import os
import weakref
from base64 import urlsafe_b64encode

#: Ids read with one system call.
BATCH = 256

#: Random bytes behind each id: its 44 URL-safe base64 characters, of which an id keeps 43 (258 bits),
#: ``secrets.token_urlsafe(32)``'s length and alphabet.
_BYTES = 33
_LENGTH = 43


class BrowserIds:
    """Unguessable browser ids, each handed out once (``take``); safe from several threads (a list's
    ``pop`` is atomic) and across ``fork``."""

    def __init__(self, batch: int = BATCH) -> None:
        self._batch = batch
        self._ids: list[str] = []
        forgotten = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: (forget := forgotten()) is not None and forget())

    def take(self) -> str:
        try:
            return self._ids.pop()
        except IndexError:
            text = urlsafe_b64encode(os.urandom(_BYTES * self._batch)).decode("ascii")
            step = _BYTES * 4 // 3
            # A fresh list: a thread still popping from the old one hands out only what it holds.
            ids = self._ids = [text[at:at + _LENGTH] for at in range(0, len(text), step)]
            return ids.pop()

    def _forget(self) -> None:
        self._ids = []
