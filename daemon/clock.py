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


# Date-time text built from tables of the fields' digits: ``datetime.isoformat`` and ``%``-formatting both
# format each field through a printf (12-13k instructions a value under callgrind, this about 6k), and the
# accept writes a dozen instants (its rows on SQLite, its emails' facts).
_UTC = timezone.utc
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(100))
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def utc_text(value: datetime, separator: str = " ") -> str:
    """The aware ``value``'s UTC instant as ``YYYY-MM-DD HH:MM:SS.ffffff`` (``separator`` between date and
    time): ``value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(separator, "microseconds")``."""
    utc = value if value.tzinfo is _UTC else value.astimezone(_UTC)
    year, microsecond, two = utc.year, utc.microsecond, _TWO_DIGITS
    return (f"{year if year >= 1000 else f'{year:04d}'}-{two[utc.month]}-{two[utc.day]}{separator}"
            f"{two[utc.hour]}:{two[utc.minute]}:{two[utc.second]}."
            f"{_THREE_DIGITS[microsecond // 1000]}{_THREE_DIGITS[microsecond % 1000]}")


def utc_isoformat(value: datetime) -> str:
    """``value.isoformat()``, from the digit tables when ``value`` is in UTC (as every instant Cabinet makes
    is: ``SystemClock``, ``as_utc``); any other zone keeps its own offset, through ``isoformat``."""
    if value.tzinfo is not _UTC:
        return value.isoformat()
    microsecond, two = value.microsecond, _TWO_DIGITS
    year = value.year
    text = (f"{year if year >= 1000 else f'{year:04d}'}-{two[value.month]}-{two[value.day]}T"
            f"{two[value.hour]}:{two[value.minute]}:{two[value.second]}")
    if microsecond:
        return f"{text}.{_THREE_DIGITS[microsecond // 1000]}{_THREE_DIGITS[microsecond % 1000]}+00:00"
    return f"{text}+00:00"
