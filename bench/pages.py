"""The signed-in workspace's pages at a big roster: the client list (first page, a search, a deep page,
a filter) and a client's page, their p50/p99 latency (budget: p99 < 50 ms at 100,000 clients).

    ./bench/run.sh --only pages [--clients 100000] [--postgres URL]

The roster is bulk rows through Cabinet's own tables (with the folded search key the roster page
searches and sorts by); the client whose page is read was added through the domain, so its timeline
has real events and emails. Each page is read by one connection (latency, not throughput: the p99 a
person waits) and by four at once (the same pages under a little contention). "common word" is a
search every client matches (the roster says "more than 1000" and reads the page in order); "filter+sort"
a filter every client matches, "rare filter" one that only the client added through the domain matches,
"word+rare filter" that filter with the common word. Then the bench's accountant joins a second firm
(one client) and the roster's pages are measured again, "two firms: ...": a staff member of several firms
has each page read along each firm's own index and merged (``firm_id IN (...)`` was read and sorted whole).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

from bench import seed
from bench.stats import median

HERE = Path(__file__).resolve().parent
REQUESTS_PER_PAGE = 200


def bulk_roster(config: Path, count: int, chunk: int = 20_000) -> None:
    """``count`` clients on the bench firm's roster, as the roster page reads them."""
    from daemon.models import Client, Firm, search_key

    app = seed.app_for(config)
    try:
        now = datetime.now(timezone.utc)
        with app.sessions.begin() as s:
            firm_id = s.scalar(select(Firm.id).where(Firm.name == seed.FIRM))
        for base in range(0, count, chunk):
            rows: list[dict[str, Any]] = []
            for i in range(base, min(base + chunk, count)):
                name = f"Roster Client {i:06d}"
                rows.append({
                    "firm_id": firm_id, "kind": "individual" if i % 3 else "business", "name": name,
                    "name_key": name.casefold(), "search_key": search_key(name), "email": f"client{i}@roster.example",
                    "billing": "none", "status": "active", "connected_at": now, "created_at": now,
                })
            with app.sessions.begin() as s:
                s.execute(insert(Client), rows)
        if app.engine.dialect.name == "postgresql":
            # What autovacuum does within a minute of a bulk load: the visibility map (index-only
            # counts) and the planner's statistics, so the pages are measured as a live roster runs.
            with app.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE clients")
    finally:
        app.close()


def the_client(config: Path) -> int:
    """A direct-discount client added through the domain (a company, products, events and emails)."""
    from daemon.onboarding import NewClient

    app = seed.app_for(config)
    try:
        added = app.onboarding.add_client(
            None, NewClient(kind="business", name="Érablière Lévesque", billing="direct",
                            email="sirop@levesque.example", phone="514 555 0100", products=("qbo-simple-start",)),
            None, "operator", "cli",
        )
        seed.flush(app)
        return added.id
    finally:
        app.close()


def second_firm(inst: Any) -> None:
    """A second firm the bench's accountant is staff of, with one client."""
    inst.cli("firm", "add", "Second CPA", "--email", "office@second.example")
    inst.cli("staff", "add-firm", seed.ACCOUNTANT, "Second CPA")
    inst.cli("client", "add", "--firm", "Second CPA", "--kind", "individual", "--name", "Aaron Second",
             "--email", "aaron@second.example", "--billing", "none")


def pages(work: Path, dbs: Any, args: argparse.Namespace) -> Any:
    from bench.instance import Instance
    from bench.run import Row, Sample, _signed_in, httpload, write_requests

    row = Row(f"workspace pages at {args.clients:,} clients (p99 budget < 50 ms)", "req/s", None)
    inst = Instance(work / "pages", dbs.new())
    inst.cli("init")
    seed.seed_invitations(inst.config, 1)
    client_id = the_client(inst.config)
    bulk_roster(inst.config, args.clients)
    inst.start()
    try:
        cookie, _ = _signed_in(inst.base_url)
        middle = max(1, args.clients // 50 // 2)
        urls = {
            "list": "/clients",
            "search": "/clients?q=client+04217",
            "common word": "/clients?q=roster",
            f"page {middle}": f"/clients?page={middle}",
            "filter+sort": "/clients?billing=none&sort=-added",
            # One client matches (the one added through the domain): the page reads it through the filter's
            # index, not the whole roster along the order's (SQLite: 40-60 ms at 100,000 before 3 December).
            "rare filter": "/clients?billing=direct&sort=-added",
            # A word every client's name holds, with that filter: the filter's client is searched, not the
            # 100,000 the search index names (SQLite: 83 ms before 3 December).
            "word+rare filter": "/clients?q=roster&billing=direct",
            "client": f"/clients/{client_id}",
        }
        notes: list[str] = []
        samples: list[Sample] = []

        def measure(pages: dict[str, str]) -> None:
            for name, url in pages.items():
                lines = [("GET", url, "", cookie)] * REQUESTS_PER_PAGE
                slug = name.replace(' ', '_').replace('+', '_').replace(':', '')
                requests = write_requests(work / f"pages-{slug}.txt", lines)
                one = [httpload(inst.base_url, requests, 1) for _ in range(args.rounds)]
                four = [httpload(inst.base_url, requests, 4) for _ in range(args.rounds)]
                errors = sum(s.errors for s in one + four)
                p50, p99 = median([s.p50 for s in one]), median([s.p99 for s in one])
                p99_four = median([s.p99 for s in four])
                samples.extend(one)
                print(f"  {name} {url}: 1 connection p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
                      f"4 connections p99 {p99_four:.1f} ms, {median([s.rate for s in four]):.0f} req/s; errors {errors}",
                      flush=True)
                notes.append(f"{name}: p50 {p50:.1f} / p99 {p99:.1f} ms (4 conn. p99 {p99_four:.1f} ms)"
                             + (f", {errors} errors" if errors else ""))

        measure(urls)
        one_firm = list(samples)  # the row's figure: the one-firm pages, as before the two-firm ones were measured
        # The same roster's pages for a staff member of two firms: the second has one client.
        second_firm(inst)
        found = httpx.get(f"{inst.base_url}/clients", headers={"Cookie": cookie}).text
        assert f"{args.clients + 2:,} clients found." in found, "the second firm's client is not on the roster"
        measure({f"two firms: {name}": url for name, url in urls.items()
                 if name in ("list", "common word", f"page {middle}", "filter+sort", "rare filter", "word+rare filter")})
        row.cabinet = one_firm
        row.note = "; ".join(notes) + f"; RSS {inst.rss_mb():.0f} MB"
    finally:
        inst.stop()
    return row



