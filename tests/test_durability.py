"""Files the database depends on are on disk, whole, before they are used.

A crash cannot be forced between a write and the disk's own cache flush, so
these tests watch the system calls that make a file durable: every
``os.fsync`` is recorded with the path it was called on (read back from
/proc/self/fd) and what the folders held at that moment. The real fsync still
runs. Everything else is real: `cabinet init`, the Maildir transport, the
outbox worker, the database.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

import pytest

from daemon import durable
from daemon.app import build
from daemon.config import load_config
from daemon.tokens import SecretKeys
from mailer.maildir import deliver, read_raw
from mailer.transports import MaildirTransport, TransportError
from tests.conftest import Cli, Env, FakeClock


class FsyncLog:
    def __init__(self) -> None:
        self.calls: list[tuple[Path, dict[str, list[str]]]] = []
        self.watch: list[Path] = []

    def snapshot(self) -> dict[str, list[str]]:
        return {str(folder): sorted(os.listdir(folder)) for folder in self.watch if folder.exists()}

    def paths(self) -> list[Path]:
        return [path for path, _ in self.calls]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FsyncLog]:
    log = FsyncLog()
    real: Callable[[int], None] = os.fsync

    def recording_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        log.calls.append((path, log.snapshot()))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    yield log


def test_init_writes_the_signing_key_whole_and_syncs_it_with_its_folder(env: Env, fsyncs: FsyncLog, cli: Cli) -> None:
    # `cli` ran `cabinet init` while fsync was being recorded.
    keys_file = env.root / "data" / "secret_keys"
    text = keys_file.read_text(encoding="utf-8")
    assert text.endswith("\n") and len(SecretKeys.load(keys_file).keys) == 1
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    synced = fsyncs.paths()
    # The key's bytes were synced under a temporary name, then the folder holding the final name.
    file_syncs = [i for i, p in enumerate(synced) if p.parent == keys_file.parent and p.name.startswith(".secret_keys.")]
    folder_syncs = [i for i, p in enumerate(synced) if p == keys_file.parent]
    assert file_syncs and folder_syncs and min(folder_syncs) > file_syncs[0], synced
    assert not [p for p in keys_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_init_keeps_an_existing_key(env: Env, cli: Cli) -> None:
    keys_file = env.root / "data" / "secret_keys"
    before = keys_file.read_bytes()
    cli("init")
    assert keys_file.read_bytes() == before


def test_a_maildir_message_is_synced_before_it_appears_in_new(tmp_path: Path, fsyncs: FsyncLog) -> None:
    maildir = tmp_path / "maildir"
    fsyncs.watch = [maildir / "new", maildir / "tmp"]
    raw = b"Subject: hello\r\n\r\n" + b"x" * 200_000 + b"\r\n"
    key = deliver(maildir, raw)
    assert read_raw(maildir, key) == raw
    assert os.listdir(maildir / "tmp") == []
    # When the message's bytes were synced, new/ did not show it yet; new/ was synced after the rename.
    (file_path, seen) = next((p, s) for p, s in fsyncs.calls if p.parent == maildir / "tmp")
    assert seen[str(maildir / "new")] == []
    assert seen[str(maildir / "tmp")] == [file_path.name]
    after = [s for p, s in fsyncs.calls if p == maildir / "new"]
    assert after and after[0][str(maildir / "new")] == [key]


def test_write_file_exclusive_refuses_to_replace_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    durable.write_file(target, b"first\n", exclusive=True)
    with pytest.raises(FileExistsError):
        durable.write_file(target, b"second\n", exclusive=True)
    assert target.read_bytes() == b"first\n"
    assert sorted(os.listdir(tmp_path)) == ["key"]


def test_every_durable_write_goes_through_the_helper() -> None:
    """No other module creates files by hand (the instance lock is a lock, not data)."""
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*(root / "daemon").rglob("*.py"), *(root / "mailer").rglob("*.py")]:
        if path.name == "durable.py":
            continue
        source = path.read_text(encoding="utf-8").replace('self._path.open("a+", encoding="utf-8")', "")
        for needle in ("create=True", "O_CREAT", "write_text(", "write_bytes(", '"w")', '"wb")', ".add(b"):
            if needle in source:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


def test_a_maildir_that_cannot_be_written_counts_as_a_failed_attempt(env: Env, cli: Cli, clock: FakeClock) -> None:
    """A disk fault while delivering is an attempt like a relay's 4xx: counted, retried, not looped on forever."""
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy")
    cli("invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
    # new/ replaced by a file: creating the delivery fails with an OSError, as on a broken disk.
    new = env.maildir / "new"
    for entry in new.iterdir():
        entry.unlink()
    new.rmdir()
    new.write_text("not a folder")
    cabinet = build(load_config(env.config_path), clock=clock)
    try:
        with pytest.raises(TransportError):
            asyncio.run(MaildirTransport(env.maildir).send("a@b.example", ["c@d.example"], b"Subject: x\r\n\r\nx\r\n"))
        assert asyncio.run(cabinet.worker.send_due()) == 0
    finally:
        cabinet.close()
    rows = env.sql("SELECT state, attempts, last_error FROM outbox")
    assert rows and all(r.state == "pending" and r.attempts == 1 for r in rows), rows
    assert all("maildir delivery failed" in r.last_error for r in rows)
