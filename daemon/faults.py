"""Storage and connection faults: the database or the disk is unavailable for a while.

They are not bugs and not the user's mistake: nothing was changed, and the same
request will work once the database is back or the disk has room. Adapters
recognise them here and answer once, briefly: exit 75 (EX_TEMPFAIL) in the
CLI, a 503 error page on the web, 451 in SMTP; never a traceback.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DatabaseError, InterfaceError, InternalError, OperationalError

# Disk full, read-only file system, quota, I/O error.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})

EX_TEMPFAIL = 75


def storage_fault(exc: BaseException) -> str | None:
    """A one-line description when ``exc`` (or what caused it) is a storage or connection fault, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Not IntegrityError or ProgrammingError (DatabaseError's other children): those are bugs.
        if isinstance(current, (OperationalError, InterfaceError, InternalError)) or type(current) is DatabaseError:
            return f"the database is unavailable ({_first_line(current.orig) or type(current).__name__})"
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            where = f" at {current.filename}" if current.filename else ""
            return f"storage is unavailable ({current.strerror or errno.errorcode.get(current.errno or 0, '')}{where})"
        current = current.__cause__ or current.__context__
    return None


def _first_line(orig: BaseException | None) -> str:
    text = str(orig or "").strip()
    return text.splitlines()[0][:200] if text else ""
