"""New browsers' ids (``daemon.web.browser_ids``): read from the kernel in batches, yet each one handed
out once, in a forked child too, and in ``secrets.token_urlsafe(32)``'s form."""

from __future__ import annotations

import os
import re
import threading

from daemon.web.browser_ids import BrowserIds


def test_ids_are_url_safe_43_characters_and_never_repeat_across_batches():
    ids = BrowserIds(batch=4)
    taken = [ids.take() for _ in range(1000)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", one) for one in taken)
    assert len(set(taken)) == len(taken)


def test_threads_taking_at_once_never_get_the_same_id():
    ids = BrowserIds(batch=8)
    taken: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(taken))

    def take(into: list[str]) -> None:
        start.wait()
        into.extend(ids.take() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [one for into in taken for one in into]
    assert len(every) == 8000 and len(set(every)) == 8000


def test_a_forked_child_never_hands_out_its_parents_ids():
    ids = BrowserIds(batch=64)
    ids.take()  # the parent holds 63 more, read before the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, "\n".join(ids.take() for _ in range(63)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = pipe.read().split("\n")
    os.waitpid(child, 0)
    parents = [ids.take() for _ in range(63)]
    assert len(childs) == 63 and set(childs).isdisjoint(parents)
