"""The roster of a staff member of several firms, through the real HTTP server: the same rows in the same
order as a plain sort of the firms' clients (both sorts each way, several pages, the last and past it,
filters, searches, one firm), and each page read along each firm's own index, merged — not every client
of the firms read and sorted (issue #10: at 100,000 clients and a second firm, 9.8 -> 42.7 ms for a
common word)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import insert

from daemon import db
from daemon.models import Client, search_key
from tests.conftest import FakeClock, RunningServer
from tests.test_workspace import add_staff, firm_id, quiet_config, signed_in, statements_of

ROW = re.compile(r'<a href="/clients/(\d+)">')
BASE = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
BIG, SMALL = 1_050, 70  # the first firm's clients are more than SEARCH_LIMIT (a common word reads in order)


@dataclass(frozen=True)
class Row:
    id: int
    firm_id: int
    search_key: str
    email: str
    billing: str
    status: str
    created_at: datetime


def bulk(server: RunningServer, firm: int, names: list[str], start: int) -> None:
    """Roster rows at once: every third billed directly or in its trial, the dates in steps of three
    (ties, broken by id), interleaved with the other firm's."""
    rows = [
        {"firm_id": firm, "kind": "individual", "name": name, "name_key": name.casefold(),
         "search_key": search_key(name), "email": f"c{start + n}@{firm}.example",
         "billing": "direct" if n % 97 == 5 else "none", "status": "trial" if n % 3 == 1 else "active",
         "connected_at": BASE, "created_at": BASE + timedelta(minutes=(start + n) % 400 // 3)}
        for n, name in enumerate(names)
    ]
    with server.cabinet.engine.execution_options(**db.WRITE).begin() as conn:
        conn.execute(insert(Client), rows)


@pytest.fixture
def two_firms(tmp_path: Path) -> Iterator[RunningServer]:
    """A quiet server (background loops wait an hour: the only statements are the page's): Marie is
    staff of Tremblay CPA (1,050 clients) and of Gagnon CPA (70), Pierre of Tremblay CPA only. Names
    interleave across the firms, and a few are the same in both (same sort key: the id decides)."""
    env, cli = quiet_config(tmp_path)
    cli("init")
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("firm", "add", "Gagnon CPA", "--email", "bureau@gagnon.example")
    add_staff(cli, "marie@tremblay.example", "Marie Tremblay", "Tremblay CPA")
    cli("staff", "add-firm", "marie@tremblay.example", "Gagnon CPA")
    add_staff(cli, "pierre@tremblay.example", "Pierre Tremblay", "Tremblay CPA")
    running = RunningServer(env, FakeClock())
    running.start()
    try:
        big, small = firm_id(env, "Tremblay CPA"), firm_id(env, "Gagnon CPA")
        bulk(running, big, [f"Client {2 * n:05d}" for n in range(BIG)], 0)
        bulk(running, small, [f"Client {2 * n + 1:05d}" for n in range(SMALL - 3)]
             + ["Client 00000", "Élan Côté", "Zoé Zed"], BIG)
        if running.cabinet.engine.dialect.name == "postgresql":
            # The planner's statistics, as autovacuum keeps them on a live roster.
            with running.cabinet.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE clients")
        yield running
    finally:
        running.stop()


def roster(server: RunningServer) -> list[Row]:
    return [Row(*row) for row in server.env.sql(
        "SELECT id, firm_id, search_key, email, billing, status, created_at FROM clients")]


def ordered(rows: list[Row], sort: str) -> list[int]:
    """The roster's order as a plain Python sort: by folded name or date added, then id; '-' reverses."""
    def key(row: Row) -> tuple[Any, int]:
        return (row.search_key if sort.lstrip("-") == "name" else str(row.created_at), row.id)

    return [row.id for row in sorted(rows, key=key, reverse=sort.startswith("-"))]


def page(ids: list[int], number: int) -> list[int]:
    return ids[(number - 1) * 50:number * 50]


def shown(html: str) -> list[int]:
    return [int(n) for n in ROW.findall(html)]


def test_a_staff_member_of_two_firms_sees_the_same_pages_as_a_plain_sort_of_both_rosters(two_firms):
    env = two_firms.env
    marie = signed_in(env, "marie@tremblay.example")
    everyone = roster(two_firms)
    big, small = firm_id(env, "Tremblay CPA"), firm_id(env, "Gagnon CPA")
    assert len(everyone) == BIG + SMALL
    last = -(-len(everyone) // 50)

    for sort in ("name", "-name", "added", "-added"):
        ids = ordered(everyone, sort)
        for number in (1, 2, 11, last):
            html = marie.get(f"/clients?sort={sort}&page={number}").text
            assert shown(html) == page(ids, number), (sort, number)
        assert shown(marie.get(f"/clients?sort={sort}&page={last + 5}").text) == page(ids, last)  # the last one
    assert f"{BIG + SMALL:,} clients found." in marie.get("/clients").text

    # Filters: a common one (read along the order's index), a rare one (through its own, SQLite), both.
    for url, keep in (
        ("billing=none", lambda r: r.billing == "none"),
        ("status=trial&sort=-added", lambda r: r.status == "trial"),
        ("billing=direct", lambda r: r.billing == "direct"),
        ("billing=direct&status=active&sort=-name", lambda r: r.billing == "direct" and r.status == "active"),
        (f"firm={small}&sort=-added", lambda r: r.firm_id == small),
        (f"firm={big}&status=active", lambda r: r.firm_id == big and r.status == "active"),
    ):
        sort = re.search(r"sort=([-a-z]+)", url)
        ids = ordered([r for r in everyone if keep(r)], sort.group(1) if sort else "name")
        pages = -(-len(ids) // 50)
        assert f"{len(ids):,} client{'' if len(ids) == 1 else 's'} found." in marie.get(f"/clients?{url}").text, url
        for number in sorted({1, 2, pages, pages + 3}):
            assert shown(marie.get(f"/clients?{url}&page={number}").text) == page(ids, min(number, pages)), (url, number)

    # Searches: a word every client matches (more than 1000: the page reads the firms in order), a short
    # word (no trigram: the same), a word with a filter, and a rare word.
    def matching(word: str) -> list[Row]:
        return [r for r in everyone if word in r.search_key or word in r.email]

    for sort in ("name", "-added"):
        ids = ordered(matching("client"), sort)
        for number in (1, 3):
            html = marie.get(f"/clients?q=client&sort={sort}&page={number}").text
            assert shown(html) == page(ids, number), (sort, number)
            assert "More than 1000 clients found" in html.replace("1,000", "1000"), html
    for url, rows, sort in (("q=7", matching("7"), "name"), ("q=7&sort=-name", matching("7"), "-name"),
                            ("q=9&billing=none&sort=added", [r for r in matching("9") if r.billing == "none"], "added"),
                            ("q=cote", matching("cote"), "name")):
        ids = ordered(rows, sort)
        pages = max(1, -(-len(ids) // 50))
        for number in sorted({1, 2, pages, pages + 2}):
            assert shown(marie.get(f"/clients?{url}&page={number}").text) == page(ids, min(number, pages)), (url, number)

    # A staff member of one of the firms sees only its clients, in the same order.
    pierre = signed_in(env, "pierre@tremblay.example")
    ids = ordered([r for r in everyone if r.firm_id == big], "-name")
    assert shown(pierre.get("/clients?sort=-name&page=4").text) == page(ids, 4)
    for browser in (marie, pierre):
        browser.close()


def _page_ids_statement(server: RunningServer, browser: Any, url: str) -> tuple[str, Any]:
    """The statement that reads the page's rows (with their firm's name), its ids a subquery with a LIMIT."""
    picks = [(statement, parameters) for statement, parameters in statements_of(server, browser, url)
             if "JOIN firms" in statement and "LIMIT" in statement]
    assert len(picks) == 1, (url, picks)
    return picks[0]


def _sorts_the_scope(server: RunningServer, statement: str, parameters: Any, merged: bool) -> list[str]:
    """The sorts in the statement's plan of more than one firm's clients, other than the final one of the
    page's 50 rows: SQLite's ``USE TEMP B-TREE FOR ORDER BY`` below the top level; PostgreSQL's Sort
    nodes below the top one and not within one firm's read (``merged``: there must be a Merge Append;
    PostgreSQL may sort a firm's few matches before merging them, as it would for a one-firm user)."""
    with server.cabinet.engine.connect() as conn:
        if server.cabinet.engine.dialect.name == "sqlite":
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return [detail for _, parent, _, detail in plan if "TEMP B-TREE" in detail and parent != 0]
        top = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
    top = json.loads(top) if isinstance(top, str) else top
    sorts: list[str] = []
    merges: list[str] = []

    def walk(node: dict[str, Any], below_top: bool, per_firm: bool) -> None:
        sort = node["Node Type"] in ("Sort", "Incremental Sort")
        if sort and below_top and not per_firm:
            sorts.append(json.dumps({k: v for k, v in node.items() if k != "Plans"}))
        if node["Node Type"] == "Merge Append":
            merges.append(node["Node Type"])
        for child in node.get("Plans", []):
            walk(child, below_top or not sort, per_firm or node["Node Type"] == "Merge Append")

    walk(top[0]["Plan"], False, False)
    if merged and not merges:
        sorts.append(f"no Merge Append: {json.dumps(top)}")
    return sorts


def test_a_page_of_two_firms_reads_each_firms_index_in_order_not_a_sort_of_both(two_firms):
    """``firm_id IN (a, b)`` has no index giving both firms' clients in order: the database read every
    client of both and sorted them for 50. Each firm is read along its own index, merged, instead: no
    sort in the plan but the page's own 50 rows. A one-firm user's statement is the one it was."""
    env = two_firms.env
    marie = signed_in(env, "marie@tremblay.example")
    for url in ("/clients", "/clients?sort=-name", "/clients?sort=added", "/clients?sort=-added&page=2",
                "/clients?billing=none", "/clients?status=active&sort=-added", "/clients?q=client",
                "/clients?q=7&sort=-name", "/clients?q=client&billing=none&sort=added"):
        statement, parameters = _page_ids_statement(two_firms, marie, url)
        assert "UNION ALL" in statement, (url, statement)
        assert not _sorts_the_scope(two_firms, statement, parameters, True), (url, statement)
        assert shown(marie.get(url).text), url

    # One firm (one staff member's only firm, or a firm chosen among several): firm_id = ?, no merge.
    pierre = signed_in(env, "pierre@tremblay.example")
    for browser, url in ((pierre, "/clients"), (pierre, "/clients?q=client&sort=-added"),
                         (marie, f"/clients?firm={firm_id(env, 'Tremblay CPA')}&sort=-name")):
        statement, parameters = _page_ids_statement(two_firms, browser, url)
        assert "UNION" not in statement, (url, statement)
        assert not _sorts_the_scope(two_firms, statement, parameters, False), (url, statement)
    for browser in (marie, pierre):
        browser.close()
