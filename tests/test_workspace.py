"""The signed-in staff's workspace, through the real HTTP server: the client list (search, filters, sort,
pages, firm scoping), a client's page and its activity timeline with delivery states, Pending, Team,
Profile, and the number of SQL statements a page costs (the same at 10 and at 200 clients)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from datetime import datetime, timezone
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import event, insert, text

from daemon import db
from daemon.cli import cli as cabinet_cli
from daemon.models import Client, search_key
from tests.conftest import (
    PASSWORD,
    Browser,
    Env,
    FakeClock,
    RunningServer,
    Seed,
    csrf_of,
    fresh_database_url,
    write_config,
)
from tests.inbound_helpers import deliver, dsn, wait_processed

ROW = re.compile(r'<a href="/clients/(\d+)">([^<]+)</a>')


def firm_id(env: Env, name: str) -> int:
    return int(env.sql("SELECT id FROM firms WHERE name = :name", name=name)[0][0])


def client_id(env: Env, name: str) -> int:
    return int(env.sql("SELECT id FROM clients WHERE name = :name", name=name)[0][0])


def many_clients(server: RunningServer, firm: int, count: int, prefix: str = "Client", billing: str = "none") -> None:
    """``count`` roster rows at once (the roster's size is what matters here, not how they were added)."""
    now = datetime.now(timezone.utc)
    rows = [
        {"firm_id": firm, "kind": "individual", "name": f"{prefix} {n:05d}", "name_key": f"{prefix} {n:05d}".casefold(),
         "search_key": search_key(f"{prefix} {n:05d}"), "email": f"c{n}@{prefix.lower()}.example", "billing": billing,
         "status": "active", "connected_at": now, "created_at": now}
        for n in range(count)
    ]
    # BEGIN IMMEDIATE on SQLite, as Cabinet's own writes: it waits for the server's writer, never
    # fails on upgrading a read lock ("database is locked" on a busy machine).
    with server.cabinet.engine.execution_options(**db.WRITE).begin() as conn:
        conn.execute(insert(Client), rows)


def signed_in(env: Env, email: str, accept_language: str = "en") -> Browser:
    browser = Browser(env.base_url, accept_language)
    response = browser.post("/sign-in", email=email, password=PASSWORD, next="/clients")
    assert response.status_code == 303, response.text
    return browser


def names(html: str) -> list[str]:
    return [name for _, name in ROW.findall(html)]


def add_staff(cli: Any, email: str, name: str, firm: str, *extra: str) -> None:
    cli("staff", "add", email, "--name", name, "--firm", firm, *extra, "--password-stdin", input=PASSWORD + "\n")


def test_the_client_list_searches_filters_sorts_pages_and_keeps_to_my_firms(server, cli, seed: Seed, env):
    for name, email in (("Érablière Roy", "sirop@roy.example"), ("Ébénisterie Côté", None), ("Zoé Gagnon", None)):
        cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", name, "--billing", "none",
            *(["--email", email] if email else []))
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Garage Lévesque", "--email",
        "marc@garage.example", "--billing", "direct", "--product", "qbo-simple-start")
    cli("client", "add", "--firm", seed.other_firm, "--kind", "individual", "--name", "Érablière Secrète",
        "--billing", "none")
    many_clients(server, firm_id(env, seed.firm), 120)
    add_staff(cli, "pierre@gagnon.example", "Pierre Gagnon", seed.other_firm)
    marie = signed_in(env, seed.accountant)

    # Accent- and case-insensitive, by name or by email; another firm's client is never found.
    found = marie.get("/clients?q=ERABL").text
    assert names(found) == ["Érablière Roy"] and "Secrète" not in found
    assert names(marie.get("/clients?q=roy.example").text) == ["Érablière Roy"]
    assert names(marie.get("/clients?q=cote+ebenis").text) == ["Ébénisterie Côté"]
    assert names(marie.get("/clients?q=%25").text) == []  # LIKE's wildcard is a plain character
    # Asking for another firm's roster shows mine, not theirs.
    other = marie.get(f"/clients?q=secrete&firm={firm_id(env, seed.other_firm)}").text
    assert names(other) == [] and "0 clients found." in other

    # Filters by billing and status.
    assert names(marie.get("/clients?billing=direct").text) == ["Garage Lévesque"]
    status = env.sql("SELECT status FROM clients WHERE name = 'Garage Lévesque'")[0][0]
    assert "Garage Lévesque" in names(marie.get(f"/clients?status={status}").text)

    # Dictionary order (É with E), 50 a page, the count, and links to the next page that keep the query.
    first = marie.get("/clients").text
    assert "124 clients found." in first and "Page 1 of 3" in first
    assert names(first)[:3] == ["Client 00000", "Client 00001", "Client 00002"]
    assert len(names(first)) == 50 and 'rel="next"' in first and 'rel="prev"' not in first
    last = marie.get("/clients?page=3").text
    assert names(last)[-4:] == ["Ébénisterie Côté", "Érablière Roy", "Garage Lévesque", "Zoé Gagnon"]
    assert len(names(last)) == 24 and 'rel="next"' not in last
    assert names(marie.get("/clients?page=99").text) == names(last)  # past the end: the last page
    assert names(marie.get("/clients?sort=-name").text)[:2] == ["Zoé Gagnon", "Garage Lévesque"]
    paged = marie.get("/clients?q=client+000&sort=-name").text
    assert "Page 1 of 2" in paged and 'href="/clients?q=client+000&amp;sort=-name&amp;page=2"' in paged

    # Signed-in staff land on their client list; the navigation counts their clients.
    home = marie.get("/").text
    assert 'aria-current="page"' in home and '<span class="count">124</span>' in home

    # A client of another firm is a 404 for me, and a page for its own firm's staff.
    secret = client_id(env, "Érablière Secrète")
    assert marie.get(f"/clients/{secret}").status_code == 404
    pierre = signed_in(env, "pierre@gagnon.example")
    assert pierre.get(f"/clients/{secret}").status_code == 200
    assert pierre.get(f"/clients/{client_id(env, 'Érablière Roy')}").status_code == 404
    assert names(pierre.get("/clients").text) == ["Érablière Secrète"]
    # Signed out: the sign-in page, then back here.
    anonymous = Browser(env.base_url)
    away = anonymous.get("/clients?q=roy&billing=none")
    assert away.status_code == 303 and away.headers["Location"] == "/sign-in?next=/clients?q%3Droy%26billing%3Dnone"
    back = anonymous.post("/sign-in", email=seed.accountant, password=PASSWORD, next="/clients?q=roy&billing=none")
    assert back.headers["Location"] == "/clients?q=roy&billing=none"
    for browser in (marie, pierre, anonymous):
        browser.close()


def test_a_client_page_shows_its_facts_and_timeline_with_delivery_states(server, cli, seed: Seed, env, mailbox):
    marie = signed_in(env, seed.accountant)
    form = marie.get("/clients/new").text
    added = marie.http.post("/clients/new", data={
        "csrf_token": csrf_of(form), "kind": "business", "name": "Garage Lévesque", "email": "nobody@remote.example",
        "phone": "514 555 0100", "billing": "direct", "quickbooks_product": "qbo-simple-start", "locale": "en"})
    assert added.status_code == 200, added.text
    sent = mailbox.wait("nobody@remote.example", count=2)
    setup = next(m for m in sent if "primary admin" in str(m["Subject"]))
    bounce_address = parseaddr(str(setup["Return-Path"]))[1]
    deliver(env, "", [bounce_address], dsn(bounce_address, "nobody@remote.example", str(setup["Message-ID"])))
    wait_processed(env, 1)

    page = marie.get(f"/clients/{client_id(env, 'Garage Lévesque')}")
    assert page.status_code == 200
    html = page.text
    for fact in ("nobody@remote.example", "514 555 0100", "Direct discount", "QuickBooks", "End of the trial",
                 "not added yet", "Tremblay CPA"):
        assert fact in html, fact
    timeline = html[html.index('<ol class="timeline">'):]
    assert "Added to the client list" in timeline and "by marie@tremblay.example, web page" in timeline
    # Both emails, one bounced with the remote server's reason, the other accepted by the relay.
    assert timeline.count('class="email"') == 2
    assert 'data-delivery="bounced"' in timeline and "User unknown" in timeline
    assert 'data-delivery="sent"' in timeline
    assert "Email to nobody@remote.example: “Tremblay CPA invites you" in timeline  # English quotes in English

    # What the operator did from the command line says so in words, not the log's "operator".
    cli("client", "resend-link", "--firm", seed.firm, "--name", "Garage Lévesque")
    assert "Setup link sent again" in marie.get(f"/clients/{client_id(env, 'Garage Lévesque')}").text
    assert "(by the operator, command line)" in marie.get(f"/clients/{client_id(env, 'Garage Lévesque')}").text

    # The same client on Pending: waiting for its primary admin, and in its trial period.
    pending = marie.get("/pending").text
    assert "Garage Lévesque (Tremblay CPA): invitation sent to nobody@remote.example" in pending
    assert "Clients in their trial period" in pending and "payment details not added yet" in pending
    assert "Garage Lévesque (Tremblay CPA):\n    the trial ends on " in pending  # "ends on" a date, as in English

    # In French, the same page speaks French.
    marie.http.post("/language", data={"csrf_token": csrf_of(html), "language": "fr", "next": "/"})
    french = marie.get(f"/clients/{client_id(env, 'Garage Lévesque')}").text
    assert "Ajouté à la liste de clients" in french and "retourné (non distribuable)" in french
    assert "Courriel à nobody@remote.example : « Tremblay CPA invites you" in french  # its subject as sent
    # Who and how in French words: not the log's "operator" and "bounce".
    assert sorted(re.findall(r"\(par [^)]*\)", french)) == [
        "(par l'opérateur, ligne de commande)", "(par marie@tremblay.example, page Web)",
        "(par nobody@remote.example, avis de non-remise)"]
    assert "Rabais direct" in french and "Direct discount" not in french
    # Pending's two entries set their colon as French does (the trial's was outside the catalogue: "Roy):").
    french_pending = marie.get("/pending").text
    assert "Garage Lévesque (Tremblay CPA) : invitation envoyée à nobody@remote.example" in french_pending
    assert "Garage Lévesque (Tremblay CPA) :\n    la période d'essai se termine le" in french_pending
    marie.close()


def test_pending_shows_invitations_to_me_and_transfers_with_time_left(server, cli, seed: Seed, env, mailbox):
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    marie = signed_in(env, seed.accountant)
    mailbox.wait(seed.accountant, subject="Invitation")
    pending = marie.get("/pending").text
    assert "Boulangerie Roy invites you to be its accountant (sent by Julie Roy (julie@roy.example)" in pending
    assert '<span data-delivery="sent">(email: sent (accepted by the mail relay))</span>' in pending
    link = re.search(r'href="(http[^"]+/invitations/[^"]+)">Open the invitation', pending)
    assert link and '<span class="count">1</span>' in pending  # the navigation counts it
    # The link on Pending is the invitation's own: accepting there connects the firm.
    accepted = marie.submit(link.group(1), link.group(1) + "/accept")
    assert accepted.status_code == 303, accepted.text
    assert "invites you" not in marie.get("/pending").text
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    pending = marie.get("/pending").text
    assert "Billing transfers to complete" in pending and "time left: 48 hours" in pending
    assert re.search(r'href="http[^"]+/transfers/[^"]+">Complete the transfer', pending)
    assert re.search(r'<a href="/clients/\d+">Open the client', pending)
    marie.close()


def test_team_shows_my_firms_staff_and_profile_changes_name_language_zone_and_password(server, cli, seed, env):
    add_staff(cli, "luc@tremblay.example", "Luc Gagnon", seed.firm)
    add_staff(cli, "pierre@gagnon.example", "Pierre Gagnon", seed.other_firm)
    marie = signed_in(env, seed.accountant)
    team = marie.get("/team").text
    assert "luc@tremblay.example" in team and "marie@tremblay.example" in team and "pierre@" not in team

    profile = marie.get("/profile").text
    token = csrf_of(profile)
    assert marie.http.post("/profile", data={"name": "Marie T.", "locale": "fr", "timezone": "America/Vancouver"}
                           ).status_code == 403  # no CSRF token
    saved = marie.http.post("/profile", data={"csrf_token": token, "name": "Marie T.", "locale": "fr",
                                              "timezone": "America/Vancouver"})
    assert saved.status_code == 303 and saved.headers["Location"] == "/profile?done=profile"
    assert env.sql("SELECT name, locale, timezone FROM users WHERE email = :e", e=seed.accountant) == [
        ("Marie T.", "fr", "America/Vancouver")]
    again = marie.get("/profile?done=profile").text
    assert "sont enregistrés" in again and "Marie T." in again
    bad_zone = marie.http.post("/profile", data={"csrf_token": token, "name": "Marie", "locale": "fr",
                                                 "timezone": "Mars/Olympus"})
    assert bad_zone.status_code == 400 and "Mars/Olympus" in bad_zone.text
    assert env.sql("SELECT timezone FROM users WHERE email = :e", e=seed.accountant) == [("America/Vancouver",)]
    empty = marie.http.post("/profile", data={"csrf_token": token, "name": "  ", "locale": "en", "timezone": "UTC"})
    assert empty.status_code == 400 and env.sql("SELECT name FROM users WHERE email = :e", e=seed.accountant) == [
        ("Marie T.",)]

    new = "a much longer new passphrase"
    wrong = marie.http.post("/profile/password", data={"csrf_token": token, "current_password": "not it",
                                                        "new_password": new, "confirm_password": new})
    assert wrong.status_code == 400 and "Le mot de passe actuel est incorrect." in wrong.text
    mismatch = marie.http.post("/profile/password", data={"csrf_token": token, "current_password": PASSWORD,
                                                           "new_password": new, "confirm_password": new + "!"})
    assert mismatch.status_code == 400 and "confirmation diffèrent" in mismatch.text
    short = marie.http.post("/profile/password", data={"csrf_token": token, "current_password": PASSWORD,
                                                        "new_password": "short", "confirm_password": "short"})
    assert short.status_code == 400 and "au moins 10 caractères" in short.text
    elsewhere = signed_in(env, seed.accountant)
    assert elsewhere.get("/profile").status_code == 200
    changed = marie.http.post("/profile/password", data={"csrf_token": token, "current_password": PASSWORD,
                                                          "new_password": new, "confirm_password": new})
    assert changed.status_code == 303 and changed.headers["Location"] == "/profile?done=password"

    # The change ends every other session of this user, not this one.
    assert marie.get("/profile").status_code == 200 and elsewhere.get("/profile").status_code == 303
    old = Browser(env.base_url)
    assert old.post("/sign-in", email=seed.accountant, password=PASSWORD, next="/").status_code == 401
    fresh = Browser(env.base_url)
    assert fresh.post("/sign-in", email=seed.accountant, password=new, next="/").status_code == 303
    for browser in (marie, elsewhere, old, fresh):
        browser.close()


def test_the_migration_folds_the_names_of_clients_already_on_a_roster(tmp_path: Path) -> None:
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0007")
        now = datetime(2026, 1, 2, tzinfo=timezone.utc)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO firms (id, name, name_key, email, created_at) "
                              "VALUES (1, 'Tremblay CPA', 'tremblay cpa', 'b@t.example', :now)"), {"now": now})
            conn.execute(text("INSERT INTO clients (firm_id, kind, name, name_key, billing, status, created_at) "
                              "VALUES (1, 'individual', 'Érablière ROY', 'érablière roy', 'none', 'active', :now)"),
                         {"now": now})
        db.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT search_key FROM clients")).all() == [("erabliere roy",)]
    finally:
        engine.dispose()


# -- the number of statements a page costs ------------------------------------------------------------


def quiet_config(folder: Path) -> tuple[Env, Callable[..., None]]:
    """A test config whose server's background loops (outbox, inbound, scheduler) run once at start,
    then wait an hour: the only statements while a page loads are the page's own; and the CLI on it,
    each command checked to succeed."""
    env = write_config(folder)
    text = env.config_path.read_text("utf-8").replace("poll_interval = 0.2", "poll_interval = 3600")
    env.config_path.write_text(text.replace("\ninterval = 0.2", "\ninterval = 3600"), "utf-8")
    runner = CliRunner()

    def cli(*args: str, input: str | None = None) -> None:
        result = runner.invoke(cabinet_cli, ["--config", str(env.config_path), *args], input=input)
        assert result.exit_code == 0, result.output

    return env, cli


@pytest.fixture
def quiet(tmp_path: Path) -> Iterator[RunningServer]:
    """A quiet server (``quiet_config``): Marie is staff of Tremblay CPA."""
    (tmp_path / "quiet").mkdir()
    env, cli = quiet_config(tmp_path / "quiet")
    cli("init")
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    add_staff(cli, "marie@tremblay.example", "Marie Tremblay", "Tremblay CPA")
    running = RunningServer(env, FakeClock())
    running.start()
    yield running
    running.stop()


def statements_of(server: RunningServer, browser: Browser, url: str) -> list[tuple[str, Any]]:
    """The SQL statements (and their parameters) the server ran while answering ``url``."""
    statements: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        with lock:
            statements.append((statement, parameters))

    event.listen(server.cabinet.engine, "before_cursor_execute", seen)
    try:
        response = browser.get(url)
    finally:
        event.remove(server.cabinet.engine, "before_cursor_execute", seen)
    assert response.status_code == 200, response.text
    return statements


def count_statements(server: RunningServer, browser: Browser, url: str) -> int:
    return len(statements_of(server, browser, url))


def test_the_client_list_and_a_client_page_cost_the_same_statements_at_10_and_200_clients(quiet):
    env = quiet.env
    marie = signed_in(env, "marie@tremblay.example")
    firm = firm_id(env, "Tremblay CPA")
    many_clients(quiet, firm, 10, prefix="Small")
    small = client_id(env, "Small 00003")
    # The roster, a search (on SQLite, through the trigram index), a short word, a page past the
    # end (the last one), a filter, a client, Pending, Team.
    pages = ("/clients", "/clients?q=small+0000&sort=-added", "/clients?q=00003", "/clients?q=l+00003",
             "/clients?page=4", "/clients?billing=none&status=active&sort=-name", f"/clients/{small}", "/pending",
             "/team")
    at_10 = [count_statements(quiet, marie, url) for url in pages]
    assert at_10 == [count_statements(quiet, marie, url) for url in pages]  # nothing else ran meanwhile
    many_clients(quiet, firm, 190, prefix="Large")
    at_200 = [count_statements(quiet, marie, url) for url in pages]
    assert "200 clients found." in marie.get("/clients").text
    assert at_200 == at_10, dict(zip(pages, zip(at_10, at_200)))
    marie.close()


COUNT_OF_CLIENTS = re.compile(r"count\([^)]*\)[^()]*\bFROM clients\b", re.IGNORECASE)
MY_FIRMS = re.compile(r"SELECT memberships\.firm_id\s+FROM memberships", re.IGNORECASE)


def test_the_roster_numbers_are_sums_of_the_counter_and_the_firms_are_the_visitors(quiet):
    """The navigation's numbers, the plain roster's and its filters' are read from
    ``firm_client_counts`` (migration 0016), never a COUNT over the roster; and no page looks up the
    user's firms again after the visitor's own read."""
    env = quiet.env
    marie = signed_in(env, "marie@tremblay.example")
    firm = firm_id(env, "Tremblay CPA")
    many_clients(quiet, firm, 120, prefix="Client")
    client = client_id(env, "Client 00007")
    urls = ("/clients", "/clients?page=2", "/clients?status=active", "/clients?billing=none&sort=-name",
            f"/clients?firm={firm}&status=trial", f"/clients/{client}", "/pending", "/team", "/profile")
    for url in urls:
        statements = [" ".join(statement.split()) for statement, _ in statements_of(quiet, marie, url)]
        assert not [s for s in statements if COUNT_OF_CLIENTS.search(s)], url
        assert not [s for s in statements if MY_FIRMS.search(s)], url
        assert sum("firm_client_counts" in s for s in statements) == (2 if url.startswith("/clients?") or url == "/clients"
                                                                      else 1), (url, statements)
    page = marie.get("/clients?firm=%d&status=active" % firm).text
    assert "120 clients found." in page and '<span class="count">120</span>' in page
    assert "0 clients found." in marie.get("/clients?status=trial").text
    marie.close()


def test_the_roster_pages_read_indexes_not_the_roster_table(quiet):
    """On SQLite, no statement of the roster's pages (plain, deep, searched, filtered) scans the
    clients table, and their counts read an index only (what makes them cost the same at 100,000)."""
    env = quiet.env
    if not quiet.cabinet.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's query plans")
    marie = signed_in(env, "marie@tremblay.example")
    many_clients(quiet, firm_id(env, "Tremblay CPA"), 301, prefix="Client")
    urls = ("/clients", "/clients?page=5", "/clients?q=client+0027", "/clients?q=client+0027&page=9",
            "/clients?q=27", "/clients?billing=none&sort=-added", "/clients?status=active", "/clients?q=client")
    for url in urls:
        for statement, parameters in statements_of(quiet, marie, url):
            if "clients" not in statement:
                continue
            with quiet.cabinet.engine.connect() as conn:
                plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            scans = [step for step in plan if re.match(r"SCAN clients\b(?! USING COVERING INDEX)", step)]
            # A lone short word has no trigram: it reads the roster in the page's order, on its index.
            assert not scans or url == "/clients?q=27", (url, statement, plan)
            if "count(" in statement and "LIMIT" not in statement:  # a count is index-only
                rows = [step for step in plan if re.match(r"(SCAN|SEARCH) clients\b", step)]
                # (The navigation's trial count reads the rows of clients in their trial, for their company.)
                assert all("COVERING INDEX" in step or "PRIMARY KEY" in step or "(status=? AND firm_id=?)" in step
                           for step in rows), (url, statement, rows)
    marie.close()


def _page_plan(server: RunningServer, browser: Browser, url: str) -> list[str]:
    """SQLite's plan for the statement that picks the page's ids (the one with a LIMIT on the roster)."""
    picks = [(statement, parameters) for statement, parameters in statements_of(server, browser, url)
             if "FROM clients" in statement and "LIMIT" in statement]
    assert len(picks) == 1, (url, picks)
    with server.cabinet.engine.connect() as conn:
        return [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + picks[0][0], picks[0][1])]


def test_a_filter_few_clients_match_is_read_through_its_index_then_sorted(quiet):
    """SQLite's planner, without statistics, read a filtered page along its order's index and skipped
    the clients the filter left out: at 100,000 clients, 40–60 ms for a filter one client matched.
    The counter's exact numbers now choose: few matches are read through the filter's index and
    sorted; many, along the order's index (``_read_by_filter``). Either way the page is the same."""
    env = quiet.env
    if not quiet.cabinet.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's query plans (PostgreSQL's planner weighs its statistics)")
    marie = signed_in(env, "marie@tremblay.example")
    firm = firm_id(env, "Tremblay CPA")
    many_clients(quiet, firm, 300, prefix="Client")
    many_clients(quiet, firm, 3, prefix="Zed Direct", billing="direct")
    many_clients(quiet, firm, 2, prefix="Able Direct", billing="direct")

    rare = _page_plan(quiet, marie, "/clients?billing=direct")
    assert any("ix_clients_billing_firm" in step for step in rare), rare
    common = _page_plan(quiet, marie, "/clients?billing=none")
    assert any("ix_clients_firm_search" in step for step in common), common
    assert not any("ix_clients_billing_firm" in step for step in common), common
    assert any("ix_clients_firm_created" in step for step in _page_plan(quiet, marie, "/clients?billing=none&sort=-added"))

    # The same pages as in the order's index, both ways.
    direct = [f"Able Direct {n:05d}" for n in range(2)] + [f"Zed Direct {n:05d}" for n in range(3)]
    assert names(marie.get("/clients?billing=direct").text) == direct
    assert names(marie.get("/clients?billing=direct&sort=-name").text) == direct[::-1]
    assert names(marie.get("/clients?billing=none").text)[:3] == ["Client 00000", "Client 00001", "Client 00002"]
    assert "5 clients found." in marie.get("/clients?billing=direct&status=active").text

    # A search with that filter searches the filter's clients, not the search index (which would name
    # every client a common word matches, each then checked against the filter).
    searched = statements_of(quiet, marie, "/clients?q=direct&billing=direct")
    assert not [statement for statement, _ in searched if "clients_search" in statement], searched
    assert names(marie.get("/clients?q=direct&billing=direct").text) == direct
    assert names(marie.get("/clients?q=zed+dir&billing=direct&sort=-name").text) == direct[:1:-1]
    assert "0 clients found." in marie.get("/clients?q=client&billing=direct").text
    assert any("clients_search" in statement for statement, _ in statements_of(quiet, marie, "/clients?q=client"))
    marie.close()


# -- in Chromium ----------------------------------------------------------------------------------------

CHROMIUM = os.environ.get("CABINET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.mark.browser
def test_staff_finds_a_client_among_ten_thousand_by_typing_part_of_its_name(server, cli, seed: Seed, env):
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}")
    many_clients(server, firm_id(env, seed.firm), 10_000)
    cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", "Érablière Lévesque",
        "--email", "sirop@levesque.example", "--billing", "none")
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = chromium.new_context(locale="en-US").new_page()
            page.goto(env.base_url + "/clients")
            page.get_by_label("Email").fill(seed.accountant)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(env.base_url + "/clients")
            assert "10,001 clients found." in page.content()
            page.get_by_label("Search by name or email").fill("erabliere lev")
            page.get_by_label("Search by name or email").press("Enter")
            page.wait_for_url(re.compile(r".*/clients\?q=erabliere\+lev.*"))
            page.get_by_role("link", name="Érablière Lévesque").click()
            page.get_by_role("heading", name="Érablière Lévesque").wait_for()
            assert "sirop@levesque.example" in page.content()
            assert "Added to the client list" in page.content()
        finally:
            chromium.close()
