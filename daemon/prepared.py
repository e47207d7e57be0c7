"""A hot page's one read with the least machinery between it and the database driver.

A Core ``SELECT`` is compiled once per engine into its dialect's SQL and parameter style, and each
execution goes straight to the DBAPI cursor of a kept read connection (``daemon.reads.ReadConnections``:
autocommit on PostgreSQL, no pool checkout). The values come back typed by the
statement's own column types (the result processors SQLAlchemy itself would apply), so the rows are
the ones ``Connection.execute`` gives; what is skipped is the per-execution machinery around them
(execution context, compiled-cache lookup, pool checkout and reset, ``BEGIN``/``ROLLBACK``), most of
the cost of a read that takes the driver a few microseconds.

Driver errors are raised as SQLAlchemy's (``DBAPIError.instance``) and a lost connection is dropped,
as ``Connection.execute`` does: callers and the web adapter's fault handling see no difference.
"""

from __future__ import annotations

from collections import namedtuple
from operator import itemgetter
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import Select
from sqlalchemy.engine import processors
from sqlalchemy.exc import MultipleResultsFound

from daemon.models import UTCDateTime, sqlite_utc_text
from daemon.reads import ReadConnections

_from_text = datetime.fromisoformat
_UTC = timezone.utc


def _sqlite_utc(value: Any) -> Any:
    """``UTCDateTime``'s value from SQLite's text, in one call: what its result processor gives (SQLite's
    ``DATETIME`` processor, ``datetime.fromisoformat``, then ``UTCDateTime.process_result_value``)
    without the ``TypeDecorator`` wrapper's two Python layers around it. Only ever called with text.

    The text is naive UTC (``UTCDateTime`` stores it so): parsed with its offset appended, in one C
    call, where ``replace(tzinfo=...)`` on the parsed value took several times the parse itself (most
    of typing the link page's row). A text that does not parse so (one carrying its own offset)
    or parses naive (a date alone, whose "+" is then read as the date's separator from a time) takes
    the long way, which gives what it always gave."""
    try:
        moment = _from_text(value + "+00:00")
        if moment.tzinfo is not None:
            return moment
    except ValueError:
        pass
    moment = _from_text(value)
    return moment.replace(tzinfo=_UTC) if moment.tzinfo is None else moment.astimezone(_UTC)


def _result_processor(column_type: Any, dialect: Any) -> tuple[Callable[[Any], Any] | None, bool]:
    """(the column's result processor, whether it may be skipped for NULL). ``UTCDateTime`` on SQLite
    (when its ``DATETIME`` reads ISO text, the default storage format) gets ``_sqlite_utc``, which gives
    the same values; every other type, its own processor, called for every value as SQLAlchemy does."""
    if type(column_type) is UTCDateTime:
        impl = column_type.impl_instance.dialect_impl(dialect)
        if impl.result_processor(dialect, None) is processors.str_to_datetime:
            return _sqlite_utc, True
    return column_type.dialect_impl(dialect).result_processor(dialect, None), False


_new_tuple = tuple.__new__
_NOTHING = object()  # no value yet (``Compiled.parameters``)


class Compiled:
    """A statement compiled once for one dialect: its SQL, its binds as the driver takes them (each
    through its column type's processor; values the statement carries itself, processed once) and its
    rows typed by its columns' result processors. Shared by reads (here) and writes
    (``daemon.prepared_write``)."""

    def __init__(self, compiled: Any, dialect: Any, columns: list[Any]) -> None:
        self.sql: str = compiled.string
        self.names = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        self.fixed: dict[str, Any] = {}
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if not bind.required:
                value = bind.effective_value
                self.fixed[name] = value if processor is None else processor(value)
            elif processor is not None:
                self.processors[name] = processor
        # No bind to process (the usual read by key): the driver's parameters straight from the binds.
        self._plain = not self.processors
        # Each processed bind with whether its processor is SQLite's UTC text (``sqlite_utc_text``), a function
        # of the value alone: a row that binds one instant to several columns (an email's created, queued and
        # next-attempt times; a new roster entry's connected and created times) has it written once, not
        # once a column (13 k instructions each).
        self._processing = tuple(
            (name, processor, processor is sqlite_utc_text) for name, processor in self.processors.items())
        self._positions = itemgetter(*self.names) if self.names else None
        self._several = self.names is not None and len(self.names) > 1
        found = [_result_processor(column.type, dialect) for column in columns]
        self.result_processors: list[Callable[[Any], Any] | None] = [processor for processor, _ in found]
        # The columns to convert, by position, and whether NULL passes through unconverted: typing a row
        # touches only those (most of a page's columns are text and integers the driver gives as is).
        self._converting = tuple(
            (index, processor, skip_null) for index, (processor, skip_null) in enumerate(found) if processor is not None
        )
        self.row = namedtuple("Row", [column.key for column in columns]) if columns else None

    def parameters(self, binds: dict[str, Any]) -> Any:
        """The driver's parameters for ``binds`` (not changed: a caller may pass the same dict again)."""
        if self._plain:
            merged = {**binds, **self.fixed} if self.fixed else binds
            if self._positions is None:
                return merged  # named style (PostgreSQL): the driver only reads it
            values = self._positions(merged)
            return values if self._several else (values,)  # itemgetter of one name gives the value itself
        binds = dict(binds)
        instant: Any = _NOTHING  # the last value ``sqlite_utc_text`` wrote in this row, and its text
        text = None
        for name, processor, utc_text in self._processing:
            if name in binds:
                value = binds[name]
                if not utc_text:
                    binds[name] = processor(value)
                elif value is instant:  # the same object: the same text
                    binds[name] = text
                else:
                    instant, text = value, processor(value)
                    binds[name] = text
        binds.update(self.fixed)
        if self.names is None:
            return binds
        return [binds[name] for name in self.names]

    def typed(self, row: Any) -> Any:
        """``row`` as a named tuple of its typed values (``namedtuple._make`` without its generator and
        length check: the driver gives one value per selected column)."""
        assert self.row is not None
        values = list(row)
        for index, processor, skip_null in self._converting:
            value = values[index]
            if value is not None or not skip_null:
                values[index] = processor(value)
        return _new_tuple(self.row, values)


class PreparedRead:
    """``statement`` on ``reads``: ``one_or_none(**binds)`` returns a named tuple of its columns or None,
    ``all(**binds)`` a list of them.

    Only plain bind parameters (no expanding ``IN``, no literal execution): what a page's read by key needs.
    """

    def __init__(self, reads: ReadConnections, statement: Select[Any]) -> None:
        dialect = reads.dialect
        compiled = statement.compile(dialect=dialect)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a prepared read takes plain bind parameters only")
        self._reads = reads
        self._compiled = Compiled(compiled, dialect, list(statement.selected_columns))

    def one_or_none(self, **binds: Any) -> Any:
        row = self.driver_row(**binds)
        return None if row is None else self._compiled.typed(row)

    def driver_row(self, **binds: Any) -> Any:
        """The one row (or None) as the driver gave it, untyped: a caller that keeps what it made of a row
        finds it again by this, and types it (``typed``) only when it makes something new."""
        rows = self._reads.execute(self._compiled.sql, self._compiled.parameters(binds), 2)
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return rows[0] if rows else None

    def typed(self, row: Any) -> Any:
        """A row of ``driver_row`` as ``one_or_none`` gives it: a named tuple of its typed values."""
        return self._compiled.typed(row)

    def all(self, **binds: Any) -> list[Any]:
        compiled = self._compiled
        return [compiled.typed(row) for row in self._reads.execute(compiled.sql, compiled.parameters(binds), None)]
