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
from collections.abc import Callable, Sequence
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(tmp: Path, data: bytes, mode: int) -> None:
    """Create ``tmp`` (never an existing file) holding ``data``, and fsync it."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
    try:
        _write_synced(tmp, data, mode)
        if exclusive:
            os.link(tmp, path)  # fails if ``path`` exists, unlike rename
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    # Only ``folder`` is synced: syncing ``staging`` too would only make the temporary name's removal
    # durable, and a crash that undoes it leaves a stale temporary file, never a lost or partial
    # ``path`` (Maildir readers clear old files from ``tmp/``). One fsync less per Maildir delivery.
    fsync_dir(folder)


def write_new_files(folder: Path, files: Sequence[tuple[str, bytes]], mode: int = 0o600, *,
                    tmp_dir: Path | None = None, cut_short: Callable[[], bool] | None = None) -> list[OSError | None]:
    """Write several new files into ``folder`` durably, with one fsync of ``folder`` for them all.

    Each file is written and fsynced under a temporary name in ``tmp_dir`` (as
    ``write_file``), then linked to its name in ``folder``, never replacing an
    existing one. Once every file has its name, ``folder`` is fsynced once: a
    group commit of the names, which all began before that fsync did, so no
    file is reported written before its name is durable. One fsync of the folder
    per file was about a quarter of a Maildir delivery's kernel time and two thirds
    of its wall time. Returns, per file in order, ``None`` (written and durable)
    or the error that stopped it, its temporary file removed; one file's error is
    that file's alone, but a failed fsync of ``folder`` is every placed file's.
    Once ``cut_short()`` is true (asked before each file but the first) the rest
    are left unwritten: the results are then those of the files before them.
    """
    staging = tmp_dir or folder
    results: list[OSError | None] = []
    placed = False
    for name, data in files:
        if results and cut_short is not None and cut_short():
            break
        tmp = staging / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            try:
                _write_synced(tmp, data, mode)
                os.link(tmp, folder / name)  # fails if the name exists, unlike rename
            finally:
                _unlink_quietly(tmp)
        except OSError as exc:
            results.append(exc)
            continue
        results.append(None)
        placed = True
    if placed:
        try:
            fsync_dir(folder)
        except OSError as exc:  # the names may not survive a crash: none of them is written
            results = [exc if result is None else result for result in results]
    return results
