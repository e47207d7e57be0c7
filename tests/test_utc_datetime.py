"""``UTCDateTime`` on SQLite: its own bind processor writes exactly the text SQLAlchemy's DATETIME writes
(the stored timestamps are compared as text in SQL, so one character's difference would reorder them)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, create_engine, insert, select, text
from sqlalchemy.dialects import sqlite

from daemon.models import UTCDateTime

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
