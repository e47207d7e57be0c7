"""Where "now" comes from.

Every deadline in Cabinet is computed from a ``Clock`` passed in by the
composition root. Production passes ``SystemClock``; tests pass a clock they
can move. There is no global switch.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


#: Bounds of a span of time that has none on one side, and a datetime's resolution (to write "from t on"
#: as the strict bound "after t - INSTANT").
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
LATEST = datetime.max.replace(tzinfo=timezone.utc)
INSTANT = timedelta(microseconds=1)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Databases may hand back naive datetimes (SQLite does); they are UTC here."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
