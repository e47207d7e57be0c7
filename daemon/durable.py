"""Files the database depends on, written so that a crash leaves either the whole file or none.

The signing key and Maildir deliveries are referred to by committed rows
(signed links, an outbox row marked sent). A crash, a power loss or a full
disk after the row commits must not leave the file empty or half-written, so
every such file is written the same way: into a temporary file in the same
folder, flushed and fsynced, renamed into place (atomic on POSIX), and the
folder fsynced so the new name itself survives.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int = 0o600, *, tmp_dir: Path | None = None, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` durably: tmp file, fsync, rename, fsync ``path``'s folder.

    ``tmp_dir`` is where the temporary file is made (the same file system as
    ``path``; Maildir's ``tmp/``), by default ``path``'s folder. ``mode`` is
    set at creation, so a secret is never readable by others, even briefly.
    ``exclusive`` refuses to replace an existing ``path`` (FileExistsError).
    """
    folder = path.parent
    staging = tmp_dir or folder
    tmp = staging / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails if ``path`` exists, unlike rename
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Only ``folder`` is synced: syncing ``staging`` too would only make the temporary name's removal
    # durable, and a crash that undoes it leaves a stale temporary file, never a lost or partial
    # ``path`` (Maildir readers clear old files from ``tmp/``). One fsync less per Maildir delivery.
    fsync_dir(folder)
