"""``UTCDateTime`` on SQLite: its own bind processor writes exactly the text SQLAlchemy's DATETIME writes
(the stored timestamps are compared as text in SQL, so one character's difference would reorder them);
``daemon.clock``'s date-time text from digit tables is ``isoformat``'s, for an email's facts too."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, create_engine, insert, select, text
from sqlalchemy.dialects import sqlite

from daemon.clock import utc_isoformat, utc_text
from daemon.models import UTCDateTime, sqlite_utc_text

VALUES = [
    datetime(2026, 5, 9, 7, 34, 55, tzinfo=timezone.utc),  # no microseconds: still written, as SQLAlchemy does
    datetime(2026, 5, 9, 7, 34, 55, 123456, tzinfo=timezone(timedelta(hours=-5))),  # another zone: its UTC
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),  # a year of three digits, zero-padded
    datetime.max.replace(tzinfo=timezone.utc),
]


@pytest.mark.parametrize("value", VALUES)
def test_the_text_written_is_sqlalchemys_for_the_utc_instant(value: datetime) -> None:
    dialect = sqlite.dialect()
    ours = UTCDateTime()._cached_bind_processor(dialect)
    sqlalchemys = DateTime()._cached_bind_processor(dialect)
    assert ours is not None and sqlalchemys is not None
    assert ours(value) == sqlalchemys(value.astimezone(timezone.utc).replace(tzinfo=None))


def test_none_is_null_and_a_naive_datetime_is_refused() -> None:
    ours = UTCDateTime()._cached_bind_processor(sqlite.dialect())
    assert ours is not None
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2026, 5, 9))


def test_a_value_goes_in_as_that_text_and_comes_back_the_same_instant() -> None:
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime()))
    engine = create_engine("sqlite://")
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        for n, value in enumerate(VALUES):
            connection.execute(insert(table).values(id=n, at=value))
        assert connection.execute(text("SELECT at FROM t WHERE id = 0")).scalar() == "2026-05-09 07:34:55.000000"
        back = connection.execute(select(table.c.at).order_by(table.c.id)).scalars().all()
    assert back == VALUES


def _many_instants() -> list[datetime]:
    """Instants over every field's digits: each month, day, hour, minute and second value, microseconds of
    one to six digits and none, years of one to four digits, and zones east and west of UTC."""
    zones = [timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30)),
             timezone(timedelta(hours=-23, minutes=-59)), timezone(timedelta(seconds=1))]
    years = [1, 9, 10, 99, 100, 999, 1000, 1969, 1970, 2026, 9999]
    microseconds = [0, 1, 9, 10, 999, 1000, 1001, 99999, 100000, 123456, 500000, 999999]
    values = []
    for n in range(2000):
        year = years[n % len(years)]
        month = 1 + n % 12
        value = datetime(year, month, 1 + (n * 7) % 28, n % 24, (n * 13) % 60, (n * 17) % 60,
                         microseconds[n % len(microseconds)], tzinfo=zones[n % len(zones)])
        if value.year == 1 and value.utcoffset() > timedelta(0) or value.year == 9999 and value.utcoffset() < timedelta(0):
            value = value.replace(tzinfo=timezone.utc)  # its UTC instant would be outside datetime's range
        values.append(value)
    return values + [datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc),
                     datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-1)))]


def test_utc_text_is_the_isoformat_of_the_utc_instant() -> None:
    for value in _many_instants():
        expected = value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")
        assert utc_text(value) == expected, value
        assert utc_text(value, "T") == expected.replace(" ", "T"), value
        assert sqlite_utc_text(value) == expected, value


def test_utc_isoformat_is_isoformat_whatever_the_zone() -> None:
    for value in _many_instants():
        assert utc_isoformat(value) == value.isoformat(), value
    # A datetime subclass in UTC, and a naive datetime (no zone, no offset) go through ``isoformat``.
    assert utc_isoformat(datetime(2026, 5, 9, 7, 34, 55)) == "2026-05-09T07:34:55"
    assert utc_isoformat(datetime(2026, 5, 9, 7, 34, 55, 5, tzinfo=timezone.utc)) == "2026-05-09T07:34:55.000005+00:00"
