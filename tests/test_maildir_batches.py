"""Maildir deliveries in batches: one fsync of ``new/`` for several emails, and still none reported early.

As in tests/test_durability.py, a crash cannot be forced between a write and
the disk's cache flush, so these tests watch the system calls: every
``os.fsync`` is recorded with the path it was called on and what ``new/`` held
at that moment (the real fsync still runs). Everything else is real: the
Maildir, the outbox worker, the database (SQLite, or PostgreSQL with
CABINET_TEST_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from daemon import durable
from daemon.app import build
from daemon.config import load_config
from mailer.maildir import _delivery_order, deliver_many, list_mail, read_raw
from tests.conftest import Cli, Env, send_due_at_once, write_config
from tests.test_relay import make_cli

class FsyncLog:
    """Each fsync's path, and what ``new/`` held when it was called."""

    def __init__(self, new: Path) -> None:
        self.new = new
        self.calls: list[tuple[Path, list[str]]] = []
        self.lock = threading.Lock()
        self.on_new: Callable[[], None] | None = None  # runs before each fsync of ``new/`` (the test's hook)

    def names_synced(self) -> set[str]:
        """Every name ``new/`` held when an fsync of ``new/`` began."""
        with self.lock:
            return {name for path, seen in self.calls if path == self.new for name in seen}

    def new_syncs(self) -> int:
        with self.lock:
            return sum(1 for path, _ in self.calls if path == self.new)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch, env: Env) -> Iterator[FsyncLog]:
    log = FsyncLog(env.maildir / "new")
    real: Callable[[int], None] = os.fsync

    def recording_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path == log.new and log.on_new is not None:
            log.on_new()
        seen = sorted(os.listdir(log.new)) if log.new.is_dir() else []
        with log.lock:
            log.calls.append((path, seen))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    yield log


def test_a_batch_is_synced_file_by_file_then_its_names_once(env: Env, fsyncs: FsyncLog) -> None:
    raws = [b"Subject: %d\r\n\r\n" % n + b"x" * (n * 10_000) + b"\r\n" for n in range(5)]
    keys = deliver_many(env.maildir, raws)
    assert all(isinstance(key, str) for key in keys)
    assert [read_raw(env.maildir, str(key)) for key in keys] == raws
    assert os.listdir(env.maildir / "tmp") == []
    # Each message's bytes were synced in tmp/ before its name appeared in new/ (new/ then held only the
    # names of the messages before it)...
    file_syncs = [seen for path, seen in fsyncs.calls if path.parent == env.maildir / "tmp"]
    assert file_syncs == [sorted(map(str, keys[:n])) for n in range(5)]
    # ...and new/ was synced once, holding all five names: the group commit.
    assert [seen for path, seen in fsyncs.calls if path == env.maildir / "new"] == [sorted(map(str, keys))]
    # Delivery order is the batch's order.
    assert sorted(map(str, keys), key=_delivery_order) == keys


def test_files_sharing_a_microsecond_keep_their_delivery_order() -> None:
    # A batch writes its names within one microsecond on a fast machine: the delivery count then orders
    # them, as a number (the run that found this had Q99 listed after Q100).
    keys = ["1796097148.M193595P2815Q99.vm", "1796097148.M193595P2815Q100.vm", "1796097148.M193596P2815Q7.vm",
            "1796097149.M5P2815Q8.vm"]
    assert sorted(reversed(keys), key=_delivery_order) == keys
    # A name Cabinet did not write sorts first, by its text, and breaks nothing.
    assert sorted(["b", "a", *keys], key=_delivery_order) == ["a", "b", *keys]


def test_one_file_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    folder, staging = tmp_path / "new", tmp_path / "tmp"
    folder.mkdir()
    staging.mkdir()
    (folder / "taken").write_bytes(b"already here")
    results = durable.write_new_files(folder, [("a", b"one"), ("taken", b"two"), ("b", b"three")], tmp_dir=staging)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], FileExistsError)
    assert (folder / "a").read_bytes() == b"one" and (folder / "b").read_bytes() == b"three"
    assert (folder / "taken").read_bytes() == b"already here"  # never replaced
    assert os.listdir(staging) == []  # no temporary file left, the failed one's included


def test_a_batch_cut_short_delivers_the_emails_before_the_cut_and_syncs_their_names(env: Env,
                                                                                     fsyncs: FsyncLog) -> None:
    """``cut_short`` (the outbox worker's: an accept came in) is asked before each email but the first; once
    true, the rest are not delivered, and what was delivered is durable as for a whole batch."""
    raws = [b"Subject: %d\r\n\r\nbody\r\n" % n for n in range(5)]
    for sub in ("tmp", "new", "cur"):  # an existing Maildir (a first delivery makes them, then delivers again)
        (env.maildir / sub).mkdir(parents=True, exist_ok=True)
    asked: list[int] = []

    def cut_short() -> bool:
        asked.append(len(os.listdir(env.maildir / "new")))
        return len(asked) == 2  # the third email finds foreground work come in

    keys = deliver_many(env.maildir, raws, cut_short)
    assert asked == [1, 2]  # never before the first email, and not after the cut
    assert len(keys) == 2 and all(isinstance(key, str) for key in keys)
    assert [read_raw(env.maildir, str(key)) for key in keys] == raws[:2]
    assert sorted(os.listdir(env.maildir / "new")) == sorted(map(str, keys))
    assert os.listdir(env.maildir / "tmp") == []
    assert [seen for path, seen in fsyncs.calls if path == env.maildir / "new"] == [sorted(map(str, keys))]


def _invite(cli: Cli, count: int) -> None:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy")
    for n in range(count):
        cli("invitation", "send", "--company", "Boulangerie Roy", "--email", f"staff{n}@tremblay.example")


def _marked_only_when_durable(cabinet: Any, fsyncs: FsyncLog, early: list[str]) -> None:
    """Check every "sent" mark as the worker writes it: its Maildir name was in new/ when an fsync of new/
    began, so the name was durable before the row says sent. Names marked too early go into ``early``."""
    record = cabinet.worker._record_sent_many

    def checked(results: Any) -> list[bool]:
        durable_names = fsyncs.names_synced()
        early.extend(answer for _, answer, _ in results if answer.removeprefix("maildir ") not in durable_names)
        return record(results)

    cabinet.worker._record_sent_many = checked


def test_the_worker_marks_an_email_sent_only_once_new_was_synced_holding_it(env: Env, cli: Cli,
                                                                            fsyncs: FsyncLog) -> None:
    _invite(cli, 12)
    cabinet = build(load_config(env.config_path))
    early: list[str] = []
    try:
        _marked_only_when_durable(cabinet, fsyncs, early)
        assert asyncio.run(cabinet.worker.send_due()) == 12
    finally:
        cabinet.close()
    assert early == []
    rows = env.sql("SELECT id, state, attempts, last_answer FROM outbox ORDER BY id")
    assert [(r.state, r.attempts) for r in rows] == [("sent", 1)] * 12
    # Fewer fsyncs of new/ than emails: the deliveries in a batch shared theirs.
    assert fsyncs.new_syncs() < 12
    # Delivered in the outbox's order, each once.
    keys = [r.last_answer.removeprefix("maildir ") for r in rows]
    assert sorted(keys, key=_delivery_order) == keys
    assert sorted(item.id for item in list_mail(env.maildir)) == sorted(keys)


def test_an_email_of_a_batch_whose_claim_passed_to_another_worker_is_not_recorded(env: Env, cli: Cli,
                                                                                  fsyncs: FsyncLog) -> None:
    _invite(cli, 3)
    cabinet = build(load_config(env.config_path))
    stolen: list[int] = []

    def steal_one() -> None:
        # While the batch is being delivered, its lease ran out and another worker claimed one of its emails.
        if not stolen:
            row = env.sql("SELECT id FROM outbox WHERE claim_token IS NOT NULL ORDER BY id DESC LIMIT 1")[0]
            env.write("UPDATE outbox SET claim_token = 'someone-else' WHERE id = :id", id=row.id)
            stolen.append(row.id)

    fsyncs.on_new = steal_one
    try:
        sent = asyncio.run(cabinet.worker.send_due())
    finally:
        cabinet.close()
    assert len(stolen) == 1
    rows = {r.id: r for r in env.sql("SELECT id, state, attempts, claim_token FROM outbox")}
    # The stolen one is the other worker's to record: still pending under its token, no attempt counted here.
    assert (rows[stolen[0]].state, rows[stolen[0]].attempts, rows[stolen[0]].claim_token) == ("pending", 0, "someone-else")
    others = [r for n, r in rows.items() if n != stolen[0]]
    assert [(r.state, r.attempts, r.claim_token) for r in others] == [("sent", 1, None)] * 2
    assert sent == 2


def test_two_workers_and_a_batch_slower_than_the_lease_deliver_each_email_once(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The first fsyncs of new/ are held past the lease: only leases renewed while the batch is written keep
    # the other worker off its emails.
    env = write_config(tmp_path, "claim_lease = 2.0\n")
    cli = make_cli(env)
    for n in range(4):
        cli("invitation", "send", "--company", "Boulangerie Roy", "--email", f"staff{n}@tremblay.example")
    real: Callable[[int], None] = os.fsync
    held = [0]

    def slow_fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")) == env.maildir / "new" and held[0] < 2:
            held[0] += 1
            time.sleep(3.0)  # a disk slower than the 2 s lease, as test_relay's slow relay
        real(fd)

    first, second = (build(load_config(env.config_path)) for _ in range(2))
    renewals = [0]
    for cabinet in (first, second):
        renew = cabinet.worker._renew

        def counting(claim: Any, renew: Any = renew) -> bool:
            renewals[0] += 1
            return bool(renew(claim))

        cabinet.worker._renew = counting
    monkeypatch.setattr(os, "fsync", slow_fsync)
    sent = send_due_at_once(first, second)
    assert renewals[0] > 0  # the held batches' leases were renewed
    queued = [r[0] for r in env.sql("SELECT message_id FROM outbox")]
    delivered = [str(item.message_id) for item in list_mail(env.maildir)]
    assert Counter(delivered) == Counter(queued)  # each Message-ID exactly once
    assert sum(sent) == len(queued)
    assert env.sql("SELECT DISTINCT state, attempts FROM outbox") == [("sent", 1)]
    assert env.sql("SELECT count(*) FROM outbox WHERE claim_token IS NOT NULL OR claimed_until IS NOT NULL") == [(0,)]
