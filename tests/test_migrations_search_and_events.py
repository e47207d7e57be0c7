"""Migrations 0021–0024, less work per accept: events' firm_id index gone (0021), one trigram GIN index
over the roster's name and address on PostgreSQL (0022), SQLite's FTS5 search table without column sizes
(0023), memberships by (firm, user) for the staff in order (0024). Each goes down and up again with the
search still finding what it found;
and the search recognises PostgreSQL's trigram indexes in either layout (0022's, or 0015's made by hand
from README's earlier SQL).

Runs on SQLite, and on PostgreSQL when ``CABINET_TEST_DATABASE_URL`` is set (see conftest)."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.orm import Session

from daemon import db
from daemon.client_search import SearchIndex, search_index
from tests.conftest import fresh_database_url
from tests.test_client_counts import downgrade
from tests.test_migrations import migration

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=timezone.utc)
README = Path(__file__).parent.parent / "README.md"
ROSTER = (("erabliere roy", "sirop@roy.example"), ("boulangerie gagnon", "pain@gagnon.example"),
          ("garage tremblay", "auto@roy-freres.example"))
SEARCHES = {"rabl": [1], "roy": [1, 3], "gagnon": [2], "p@roy": [1], "zzz": []}


def fill(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO firms (id, name, name_key, email, created_at) "
                          "VALUES (1, 'Tremblay CPA', 'tremblay cpa', 'b@t.example', :now)"), {"now": NOW})
        for n, (key, email) in enumerate(ROSTER, start=1):
            conn.execute(text("INSERT INTO clients (id, firm_id, kind, name, name_key, search_key, email, billing, "
                              "status, created_at) VALUES (:id, 1, 'individual', :key, :key, :key, :email, 'none', "
                              "'active', :now)"), {"id": n, "key": key, "email": email, "now": NOW})


def searched(conn: Connection) -> dict[str, list[int]]:
    """Each word's clients, through the index the dialect has (SQLite: FTS5's MATCH, checked against the
    roster first; PostgreSQL: the search's LIKE, which its GIN index serves)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("INSERT INTO clients_search (clients_search) VALUES ('integrity-check')")
        return {word: list(conn.exec_driver_sql(
            "SELECT rowid FROM clients_search WHERE clients_search MATCH ? ORDER BY rowid", (f'"{word}"',)).scalars())
            for word in SEARCHES}
    return {word: list(conn.execute(text(
        "SELECT id FROM clients WHERE search_key LIKE :p OR email LIKE :p ORDER BY id"), {"p": f"%{word}%"}).scalars())
        for word in SEARCHES}


def trigram_indexes(conn: Connection) -> dict[str, str]:
    """PostgreSQL's GIN trigram indexes on clients: name -> definition."""
    return dict(conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'clients' "
                                  "AND indexdef LIKE '%gin_trgm_ops%'")).all())


def fts_sql(conn: Connection) -> str:
    return conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'clients_search'").scalar() or ""


def indexes(engine: Engine, table: str) -> set[str]:
    return {ix["name"] for ix in inspect(engine).get_indexes(table)}


def check_head(engine: Engine) -> None:
    assert "ix_events_firm_id" not in indexes(engine, "events")
    memberships = indexes(engine, "memberships")
    assert "ix_memberships_firm_user" in memberships and "ix_memberships_firm_id" not in memberships
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            assert "columnsize=0" in fts_sql(conn)
            assert "clients_search_docsize" not in inspect(conn).get_table_names()
        else:
            assert trigram_indexes(conn) == {
                "ix_clients_search_trgm": "CREATE INDEX ix_clients_search_trgm ON public.clients USING gin "
                                          "(search_key gin_trgm_ops, email gin_trgm_ops)"}
        assert searched(conn) == SEARCHES


def check_0020(engine: Engine) -> None:
    assert "ix_events_firm_id" in indexes(engine, "events")
    memberships = indexes(engine, "memberships")
    assert "ix_memberships_firm_id" in memberships and "ix_memberships_firm_user" not in memberships
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            assert "columnsize" not in fts_sql(conn)
            assert "clients_search_docsize" in inspect(conn).get_table_names()
        else:
            assert set(trigram_indexes(conn)) == {"ix_clients_search_key_trgm", "ix_clients_email_trgm"}
        assert searched(conn) == SEARCHES


def test_0021_to_0024_go_down_and_up_again_and_the_search_finds_the_same_clients(tmp_path: Path) -> None:
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0020")
        fill(engine)
        check_0020(engine)
        db.upgrade(engine)
        check_head(engine)
        downgrade(engine, "0020")
        check_0020(engine)
        db.upgrade(engine)
        check_head(engine)
        with engine.begin() as conn:  # the triggers 0023 made keep the index in step with the roster
            conn.execute(text("UPDATE clients SET email = 'sirop@dupuis.example' WHERE id = 1"))
            conn.execute(text("DELETE FROM clients WHERE id = 2"))
            assert searched(conn) == {**SEARCHES, "p@roy": [], "gagnon": []}
    finally:
        engine.dispose()


def index_kind(engine: Engine) -> SearchIndex:
    with Session(engine) as s:
        return search_index(s)


@pytest.mark.skipif("CABINET_TEST_DATABASE_URL" not in __import__("os").environ,
                    reason="PostgreSQL's trigram indexes (SQLite's is FTS5's)")
def test_the_search_recognises_either_postgresql_layout_and_only_a_whole_one(tmp_path: Path, caplog) -> None:
    """An operator whose role could not create pg_trgm ran README's SQL by hand: before 0022 it made one
    index a column, since then one over both. Either is the search's index; one of 0015's two alone is not
    (the search ORs the two columns' LIKEs: half of them indexed reads the roster anyway)."""
    engine = db.make_engine(fresh_database_url(tmp_path))
    old = migration("0015").PG_INDEXES
    try:
        db.upgrade(engine)
        assert index_kind(engine) is SearchIndex.PG_TRGM
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_clients_search_trgm")
            for name, column in old.items():
                conn.exec_driver_sql(f"CREATE INDEX {name} ON clients USING gin ({column} gin_trgm_ops)")
        assert index_kind(engine) is SearchIndex.PG_TRGM
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_clients_email_trgm")
        with caplog.at_level(logging.WARNING, logger="daemon.client_search"):
            assert index_kind(engine) is SearchIndex.NONE
        assert "no search index" in caplog.text
    finally:
        engine.dispose()


@pytest.mark.skipif("CABINET_TEST_DATABASE_URL" not in __import__("os").environ,
                    reason="PostgreSQL's pg_trgm")
def test_without_pg_trgm_0022_logs_readmes_sql_and_that_sql_makes_the_search_index(tmp_path: Path, caplog) -> None:
    """A database whose role could not create pg_trgm at 0015 has no trigram index for 0022 to replace:
    0022 says what to run by hand, README says the same, and once run the search has its index."""
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0021")
        with engine.begin() as conn:  # as if 0015 could not create it (the test server's role can)
            conn.exec_driver_sql("DROP EXTENSION pg_trgm CASCADE")
        with caplog.at_level(logging.WARNING, logger="cabinet.migrations"):
            db.upgrade(engine)
        manual = migration("0022").MANUAL_SQL
        assert manual in caplog.text
        assert index_kind(engine) is SearchIndex.NONE
        with engine.begin() as conn:
            assert trigram_indexes(conn) == {}
            for statement in filter(None, (part.strip() for part in manual.split(";"))):
                conn.exec_driver_sql(statement)
        assert index_kind(engine) is SearchIndex.PG_TRGM
        # README's shell lines run the same two statements.
        readme = set(re.findall(r"-c '([^']+)'", README.read_text()))
        assert {part.strip() for part in manual.split(";") if part.strip()} <= readme
        fill(engine)
        with engine.connect() as conn:
            assert searched(conn) == SEARCHES
    finally:
        engine.dispose()
