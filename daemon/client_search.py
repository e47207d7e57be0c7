"""The roster's search box: each folded word found in a client's folded name or its address.

The words are folded as ``clients.search_key`` is (case and accents away: ``search_key``), and each
must appear somewhere in the name or in the address (``LIKE '%word%'``, with ``%``, ``_`` and ``\\``
as plain characters). A trigram index answers that without reading the roster (migration 0015):

- on PostgreSQL, pg_trgm's GIN index over both columns (migration 0022; or 0015's two, one a column,
  which README's SQL made by hand before) serves the ``LIKE`` itself, so the statement is the same
  with or without it;
- on SQLite, the FTS5 ``clients_search`` table is asked for the words' rows (``MATCH``, each word a
  quoted phrase so that ``"``, ``*``, ``-``, ``:`` or ``NEAR`` are plain text), and the roster reads
  those rows by id.

A trigram is three characters, so a word of one or two cannot use the index: with longer words it
filters the rows they found; alone, the search reads the roster in the page's order until it has a
page (quick for a common fragment, which is what a short word is).
"""

from __future__ import annotations

import logging
from enum import StrEnum

from sqlalchemy import ColumnElement, Integer, column, literal_column, or_, table, text
from sqlalchemy.orm import Session

from daemon.models import Client, search_key

log = logging.getLogger(__name__)

TRIGRAM = 3  # the shortest word a trigram index can look up
SEARCH_TABLE = table("clients_search", column("rowid", Integer))
# PostgreSQL's trigram indexes, either layout complete: one over both columns (0022), or one a column
# (0015, and README's manual SQL until 0022). Both of the latter: the search ORs its ``LIKE``s on the
# two columns, and with one of them indexed alone the statement reads the roster anyway.
PG_TRGM_LAYOUTS = (frozenset({"ix_clients_search_trgm"}),
                   frozenset({"ix_clients_search_key_trgm", "ix_clients_email_trgm"}))


class SearchIndex(StrEnum):
    FTS5 = "fts5"  # SQLite: the clients_search table
    PG_TRGM = "pg_trgm"  # PostgreSQL: GIN trigram index(es) the LIKE uses as it is
    NONE = "none"  # the search scans the roster


def words(text_: str) -> list[str]:
    """The search box's words, folded as the roster's names are."""
    return search_key(text_).split()


def contains(word: str) -> ColumnElement[bool]:
    """The word in the client's folded name or in its address (stored lower-case, so compared as is)."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return or_(Client.search_key.like(pattern, escape="\\"), Client.email.like(pattern, escape="\\"))


def indexed(found: list[str]) -> list[str]:
    """The words a trigram index can look up."""
    return [word for word in found if len(word) >= TRIGRAM]


def fts_match(found: list[str]) -> ColumnElement[bool]:
    """FTS5's rows holding every word (each in the name or the address), the words as plain text.

    A double-quoted FTS5 string is one phrase whatever it holds (a ``"`` in it doubled); with the
    trigram tokenizer a phrase matches where its characters appear in a row, as ``LIKE '%word%'``.
    """
    query = " AND ".join('"' + word.replace('"', '""') + '"' for word in indexed(found))
    return literal_column("clients_search").op("MATCH")(query)


def search_index(s: Session) -> SearchIndex:
    """Which trigram index this database has (migration 0015 builds it where it can); logged when none."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        found = s.scalar(text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'clients_search'"))
        kind = SearchIndex.FTS5 if found else SearchIndex.NONE
    elif dialect == "postgresql":
        names = set(s.scalars(text("SELECT indexname FROM pg_indexes "
                                   "WHERE schemaname = current_schema() AND tablename = 'clients'")))
        kind = SearchIndex.PG_TRGM if any(layout <= names for layout in PG_TRGM_LAYOUTS) else SearchIndex.NONE
    else:
        kind = SearchIndex.NONE
    if kind is SearchIndex.NONE:
        log.warning("the roster has no search index on this %s database: the search box scans the roster "
                    "(see README, 'The pages at 100,000 clients')", dialect)
    return kind
