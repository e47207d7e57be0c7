"""The local Maildir: durable delivery, and reading for `cabinet mail list` and `cabinet mail show`."""

from __future__ import annotations

import itertools
import mailbox
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

from daemon import durable
from daemon.errors import NotFound

_DELIVERIES = itertools.count()


@dataclass(frozen=True)
class StoredMail:
    id: str
    date: str
    sender: str
    to: str
    subject: str
    message_id: str

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "date": self.date,
            "from": self.sender,
            "to": self.to,
            "subject": self.subject,
            "message_id": self.message_id,
        }


def deliver(path: Path, raw: bytes) -> str:
    """Deliver ``raw`` into the Maildir at ``path`` and return its key (``deliver_many`` of one)."""
    (result,) = deliver_many(path, [raw])
    if isinstance(result, OSError):
        raise result
    return result


def deliver_many(path: Path, raws: Sequence[bytes], cut_short: Callable[[], bool] | None = None
                 ) -> list[str | OSError]:
    """Deliver each of ``raws`` into the Maildir at ``path``, in order; per message its key, or why it failed.

    Each file is written and fsynced in ``tmp/`` and linked into ``new/``, then
    ``new/`` is fsynced once for them all (``durable.write_new_files``): once this
    returns (and the outbox marks the rows sent) every delivered message is on disk,
    and a reader never sees a partly written one in ``new/``. Once ``cut_short()`` is
    true (asked before each message but the first) the rest are not delivered: the
    results are those of the messages before them.
    """
    # The usual Maildir name: "<seconds>.M<microseconds>P<pid>Q<count>.<host>", unique per delivery.
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    pid = os.getpid()
    files = []
    for raw in raws:
        now = time.time()
        files.append((f"{int(now)}.M{int(now % 1 * 1e6)}P{pid}Q{next(_DELIVERIES)}.{host}", raw))
    results = durable.write_new_files(path / "new", files, 0o600, tmp_dir=path / "tmp", cut_short=cut_short)
    if any(isinstance(result, FileNotFoundError) for result in results):
        # The first delivery (or the folders were removed): make them, then deliver what failed. Not before
        # every delivery: three mkdir calls and their exceptions for folders that are nearly always there.
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        again = [n for n, result in enumerate(results) if isinstance(result, FileNotFoundError)]
        for n, result in zip(again, durable.write_new_files(path / "new", [files[n] for n in again], 0o600,
                                                            tmp_dir=path / "tmp"), strict=True):
            results[n] = result
    return [files[n][0] if result is None else result for n, result in enumerate(results)]


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _summary(key: str, message: EmailMessage) -> StoredMail:
    date = message.get("Date", "")
    try:
        iso = parsedate_to_datetime(date).isoformat() if date else ""
    except (TypeError, ValueError):
        iso = date
    return StoredMail(
        id=key,
        date=iso,
        sender=str(message.get("From", "")),
        to=str(message.get("To", "")),
        subject=str(message.get("Subject", "")),
        message_id=str(message.get("Message-ID", "")),
    )


def list_mail(path: Path, to: str | None = None) -> list[StoredMail]:
    """Every message in the Maildir, oldest first."""
    if not path.exists():
        return []
    box = mailbox.Maildir(path, create=False)
    items = []
    for key in box.keys():
        with box.get_file(key) as handle:
            items.append(_summary(key, _parse(handle.read())))
    if to:
        needle = to.lower()
        items = [item for item in items if needle in item.to.lower()]
    return sorted(items, key=lambda item: (item.date, _delivery_order(item.id)))


def _delivery_order(key: str) -> tuple[int, int, int, str]:
    """Maildir keys start "<seconds>.M<microseconds>P<pid>Q<count>…", unpadded: compare the numbers, not
    the text. A batch's files can share their microsecond; then the process's delivery count orders them
    (as text, "Q100" would come before "Q99")."""
    match = re.match(r"(\d+)\.M(\d+)(?:P\d+Q(\d+))?", key)
    if match is None:
        return (0, 0, 0, key)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0), key)


def read_raw(path: Path, key: str) -> bytes:
    """The message exactly as delivered."""
    box = mailbox.Maildir(path, create=False) if path.exists() else None
    if box is None or key not in box:
        raise NotFound("mail.not_found", key=key, path=path)
    with box.get_file(key) as handle:
        return handle.read()


def read_mail(path: Path, key: str) -> EmailMessage:
    return _parse(read_raw(path, key))


def text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""
