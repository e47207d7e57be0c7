"""The roster's search box on its trigram index (migration 0015): the characters people type are plain
text, the index follows every write to a client, a common fragment says "more than 1000", and
without the index (an SQLite without FTS5's trigram) the search still answers, by scanning.

Runs on SQLite, and on PostgreSQL when ``CABINET_TEST_DATABASE_URL`` is set (see conftest)."""

from __future__ import annotations

import html
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, insert, text
from sqlalchemy.pool import NullPool

from daemon import db
from daemon.app import Cabinet, build
from daemon.client_search import SearchIndex
from daemon.config import load_config
from daemon.models import Client, search_key
from daemon.workspace import SEARCH_LIMIT, RosterQuery
from tests.conftest import Cli, Env, Seed, fresh_database_url

ROW = re.compile(r'<a href="/clients/(\d+)">([^<]+)</a>')


@pytest.fixture
def cabinet(cli: Cli, seed: Seed, env: Env) -> Iterator[Cabinet]:
    app = build(load_config(env.config_path))
    yield app
    app.close()


def marie(env: Env) -> int:
    return int(env.sql("SELECT id FROM users WHERE email = 'marie@tremblay.example'")[0][0])


def write(env: Env, sql: str, **params: Any) -> None:
    """A write straight to the database (for what no command does yet: rename, remove)."""
    engine = create_engine(load_config(env.config_path).database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def bulk(cabinet: Cabinet, env: Env, count: int, prefix: str) -> None:
    firm = int(env.sql("SELECT id FROM firms WHERE name = 'Tremblay CPA'")[0][0])
    now = datetime.now(timezone.utc)
    rows = [
        {"firm_id": firm, "kind": "individual", "name": f"{prefix} {n:05d}", "name_key": f"{prefix} {n:05d}".casefold(),
         "search_key": search_key(f"{prefix} {n:05d}"), "email": f"c{n}@{prefix.lower()}.example", "billing": "none",
         "status": "active", "connected_at": now, "created_at": now}
        for n in range(count)
    ]
    with cabinet.engine.execution_options(**db.WRITE).begin() as conn:  # BEGIN IMMEDIATE, as Cabinet's writes
        conn.execute(insert(Client), rows)


def found(cabinet: Cabinet, user_id: int, words: str, **query: Any) -> list[str]:
    user = cabinet.roster.get_user(user_id)
    return [row.name for row in cabinet.workspace.clients(user, RosterQuery(text=words, **query)).rows]


def check_index(cabinet: Cabinet) -> None:
    """SQLite: FTS5 checks its trigram index against the roster it indexes (raises if they differ)."""
    if cabinet.engine.dialect.name == "sqlite":
        with cabinet.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO clients_search (clients_search) VALUES ('integrity-check')")


SPECIAL = ("Dupont 100% Bio", "Atelier_Nord", "Back\\Slash Inc", 'Le "Bon" Pain', "O'Neil Plomberie",
           "Étoile*Filante", "Near North Traiteur", "Saint-Jean Garage", "Plan:B Conseil", "Paren(thèse) Café")
# What each box finds: every character the search's LIKE or FTS5's query syntax gives a meaning to
# (% _ \ for LIKE; " * - : ( ) NEAR AND OR NOT ^ + for FTS5) is a plain character, alone or in a word.
EXPECTED = {
    "%": ["Dupont 100% Bio"], "0%": ["Dupont 100% Bio"], "100% bio": ["Dupont 100% Bio"],
    "_": ["Atelier_Nord"], "r_n": ["Atelier_Nord"],
    "\\": ["Back\\Slash Inc"], "k\\sl": ["Back\\Slash Inc"],
    '"': ['Le "Bon" Pain'], '"bon"': ['Le "Bon" Pain'], 'le "bon': ['Le "Bon" Pain'],
    "'": ["O'Neil Plomberie"], "o'neil": ["O'Neil Plomberie"],
    "*": ["Étoile*Filante"], "etoile*": ["Étoile*Filante"], "le*fil": ["Étoile*Filante"], "*fil": ["Étoile*Filante"],
    "NEAR": ["Near North Traiteur"], "near north": ["Near North Traiteur"], "NEAR(north": [],
    "-": ["Saint-Jean Garage"], "-jean": ["Saint-Jean Garage"], "saint -jean": ["Saint-Jean Garage"], "t-j": ["Saint-Jean Garage"],
    ":": ["Plan:B Conseil"], "n:b": ["Plan:B Conseil"], "plan:": ["Plan:B Conseil"], "search_key:plan": [],
    "(": ["Paren(thèse) Café"], "n(the": ["Paren(thèse) Café"], "se) caf": ["Paren(thèse) Café"],
    "AND": [], "north OR bio": [], "NOT bio": [], "^plan": [], "+bio": [], "{search_key}": [],
}


def test_the_characters_people_type_are_plain_text(cabinet: Cabinet, cli: Cli, seed: Seed, env: Env) -> None:
    for name in SPECIAL:
        cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", name, "--billing", "none")
    bulk(cabinet, env, 60, "Client")  # a wildcard taken as one would find these too
    user = marie(env)
    sqlite = cabinet.engine.dialect.name == "sqlite"
    assert cabinet.workspace.search_index is (SearchIndex.FTS5 if sqlite else SearchIndex.PG_TRGM)
    answers = {box: found(cabinet, user, box) for box in EXPECTED}
    assert answers == EXPECTED
    check_index(cabinet)


def test_the_search_finds_a_client_after_each_write(server, cli: Cli, seed: Seed, env: Env) -> None:
    cabinet = server.cabinet
    user = marie(env)
    bulk(cabinet, env, 30, "Filler")

    # Added (the CLI here; the web page and the accepted invitation go through the same insert).
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Fromagerie Bergeron",
        "--email", "info@bergeron.example", "--billing", "none")
    assert found(cabinet, user, "bergeron") == ["Fromagerie Bergeron"]
    assert found(cabinet, user, "info@berg") == ["Fromagerie Bergeron"]

    # Its address changed (`client edit`): found by the new one, no longer by the old.
    cli("client", "edit", "--firm", seed.firm, "--name", "Fromagerie Bergeron", "--email", "ventes@fromages.example")
    assert found(cabinet, user, "ventes@") == ["Fromagerie Bergeron"]
    assert found(cabinet, user, "info@berg") == []
    cli("client", "edit", "--firm", seed.firm, "--name", "Fromagerie Bergeron", "--email", "")
    assert found(cabinet, user, "ventes@") == [] and found(cabinet, user, "bergeron") == ["Fromagerie Bergeron"]

    # Merged: a client added without QuickBooks, then connected by the company of the same name
    # (the roster's row is updated, not added again), is still found.
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", seed.company, "--billing", "none")
    sent = cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output
    token = sent.split("/invitations/")[1].split()[0]
    cabinet.roster.accept_invitation(token, user, None, channel="cli")
    assert env.sql("SELECT count(*) FROM clients WHERE company_id IS NOT NULL")[0][0] == 1
    assert found(cabinet, user, "boulangerie") == [seed.company]

    # Renamed, then removed (no command does either yet; the index follows the table whatever writes it).
    write(env, "UPDATE clients SET name = 'Fromagerie Gagnon', name_key = 'fromagerie gagnon', "
               "search_key = 'fromagerie gagnon' WHERE name = 'Fromagerie Bergeron'")
    assert found(cabinet, user, "gagnon") == ["Fromagerie Gagnon"] and found(cabinet, user, "bergeron") == []
    write(env, "DELETE FROM clients WHERE name = 'Filler 00007'")
    assert found(cabinet, user, "filler 00007") == [] and found(cabinet, user, "filler 0000") == [
        f"Filler 0000{n}" for n in range(10) if n != 7]
    check_index(cabinet)


def test_a_common_fragment_says_more_than_the_limit_and_pages_on(server, cli: Cli, seed: Seed, env: Env) -> None:
    from tests.test_workspace import signed_in

    bulk(server.cabinet, env, SEARCH_LIMIT + 100, "Client")
    browser = signed_in(env, seed.accountant)
    first = browser.get("/clients?q=client").text
    assert f"More than {SEARCH_LIMIT:,} clients found" in first and "Page 1<" in first
    assert [html.unescape(n) for _, n in ROW.findall(first)][:2] == ["Client 00000", "Client 00001"]
    assert 'href="/clients?q=client&amp;page=2" rel="next"' in first
    deep = browser.get("/clients?q=client&page=22").text
    assert [n for _, n in ROW.findall(deep)][0] == "Client 01050" and 'rel="next"' in deep
    # A narrower search is counted exactly again (a short word filtering what the longer one found).
    assert "1 client found." in browser.get("/clients?q=client+01077").text
    assert "11 clients found." in browser.get("/clients?q=c+0108").text
    # The plain roster is always counted.
    plain = browser.get("/clients").text
    assert f"{SEARCH_LIMIT + 100:,} clients found." in plain and f'<span class="count">{SEARCH_LIMIT + 100:,}</span>' in plain
    # In French: the number's form, and its thousands as French writes them (a no-break space).
    browser.post("/language", language="fr", next="/clients")
    plain = browser.get("/clients").text
    assert "1\xa0100 clients trouvés." in plain and '<span class="count">1\xa0100</span>' in plain
    assert "Plus de 1\xa0000 clients trouvés" in browser.get("/clients?q=client").text
    assert "1 client trouvé." in browser.get("/clients?q=client+01077").text
    assert "0 client trouvé." in browser.get("/clients?q=nobody").text
    browser.close()


def test_short_words_filter_what_the_longer_ones_find(cabinet: Cabinet, cli: Cli, seed: Seed, env: Env) -> None:
    bulk(cabinet, env, 120, "Client")
    user = marie(env)
    assert found(cabinet, user, "client 5 0011") == ["Client 00115"]
    assert found(cabinet, user, "05") == ["Client 00005", *[f"Client 000{n}" for n in range(50, 60)],
                                          "Client 00105"]
    assert found(cabinet, user, "c50@") == ["Client 00050"]
    assert found(cabinet, user, "zz client") == []


@pytest.mark.skipif("CABINET_TEST_DATABASE_URL" in __import__("os").environ, reason="SQLite's FTS5 index")
def test_without_the_trigram_index_the_search_scans_and_says_so(cli: Cli, seed: Seed, env: Env, caplog) -> None:
    cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", "Érablière Roy", "--billing", "none")
    write(env, "DROP TABLE clients_search")
    for trigger in ("insert", "update", "delete"):
        write(env, f"DROP TRIGGER clients_search_{trigger}")
    with caplog.at_level(logging.WARNING, logger="daemon.client_search"):
        app = build(load_config(env.config_path))
    try:
        assert "no search index" in caplog.text
        assert found(app, marie(env), "ERABL roy") == ["Érablière Roy"]
        assert found(app, marie(env), "%") == []
    finally:
        app.close()


def test_the_migration_indexes_the_clients_already_on_a_roster(tmp_path: Path) -> None:
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0014")
        now = datetime(2026, 1, 2, tzinfo=timezone.utc)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO firms (id, name, name_key, email, created_at) "
                              "VALUES (1, 'Tremblay CPA', 'tremblay cpa', 'b@t.example', :now)"), {"now": now})
            conn.execute(text("INSERT INTO clients (firm_id, kind, name, name_key, search_key, email, billing, status, "
                              "created_at) VALUES (1, 'individual', 'Érablière Roy', 'érablière roy', 'erabliere roy', "
                              "'sirop@roy.example', 'none', 'active', :now)"), {"now": now})
        db.upgrade(engine)
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                hits = conn.exec_driver_sql(
                    "SELECT rowid FROM clients_search WHERE clients_search MATCH '\"rabli\" AND \"p@roy\"'").all()
                assert len(hits) == 1
            else:
                names = {row[0] for row in conn.execute(text(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'clients' AND indexdef LIKE '%gin_trgm_ops%'"))}
                assert names == {"ix_clients_search_trgm"}  # 0015's two, one over both columns since 0022
    finally:
        engine.dispose()
