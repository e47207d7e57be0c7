"""The roster's numbers kept by the database (migrations 0016, 0017): ``firm_client_counts``, summed
over its slots, equals a COUNT(*) of the roster per (firm, status, billing) after every path that
writes a client — the CLI, the domain, an accepted invitation (a new entry, or a merge with an entry
added without QuickBooks), a completed setup, payment details, a lapsed trial, a completed billing
transfer, a contact edit, raw SQL (a move, a delete) and a bulk Core insert; 0016 fills it from a
roster already there and its downgrade removes it; 0017 keeps the numbers into its slots and back;
and on PostgreSQL, transactions adding and moving clients of the same firms at once all commit and
leave it exact, and two adding a client to the same firm, status and billing do not wait for each
other.

Runs on SQLite, and on PostgreSQL when ``CABINET_TEST_DATABASE_URL`` is set (see conftest)."""

from __future__ import annotations

import random
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, inspect, text

from daemon import db
from daemon.config import load_config
from daemon.models import Client, search_key
from daemon.onboarding import NewClient
from tests.conftest import Cli, Env, FakeClock, Mailbox, RunningServer, Seed, any_link_in, fresh_database_url

Counts = dict[tuple[int, str, str], int]
SUMMED = "SELECT firm_id, status, billing, sum(clients) FROM firm_client_counts GROUP BY firm_id, status, billing"


def kept_counts(env: Env) -> Counts:
    """The counter, summed over its slots, checked against the roster it counts (a key's sum may stay
    at 0, never below; one slot's row may: it sums changes, not clients)."""
    counted = {(int(f), s, b): int(n) for f, s, b, n in env.sql(
        "SELECT firm_id, status, billing, count(*) FROM clients GROUP BY firm_id, status, billing")}
    rows = env.sql(SUMMED)
    assert all(n >= 0 for *_, n in rows), rows
    kept = {(int(f), s, b): int(n) for f, s, b, n in rows if n}
    assert kept == counted
    return kept


def nav_count(html: str, page: str) -> int:
    """The number the navigation shows next to a page's link."""
    found = re.search(rf'<a href="/{page}"[^>]*>[^<]+<span class="count">(\d+)</span>', html)
    assert found, html
    return int(found.group(1))


def token_of(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[1]


def firm_id(env: Env, name: str) -> int:
    return int(env.sql("SELECT id FROM firms WHERE name = :name", name=name)[0][0])


def user_id(env: Env, email: str) -> int:
    return int(env.sql("SELECT id FROM users WHERE email = :email", email=email)[0][0])


def bulk(server: RunningServer, firm: int, count: int, prefix: str, **values: str) -> None:
    now = datetime.now(timezone.utc)
    rows = [
        {"firm_id": firm, "kind": "individual", "name": f"{prefix} {n:05d}", "name_key": f"{prefix} {n:05d}".casefold(),
         "search_key": search_key(f"{prefix} {n:05d}"), "billing": "none", "status": "active",
         "connected_at": now, "created_at": now, **values}
        for n in range(count)
    ]
    with server.cabinet.engine.execution_options(**db.WRITE).begin() as conn:
        conn.execute(insert(Client), rows)


def write(server: RunningServer, sql: str, **params: Any) -> int:
    with server.cabinet.engine.execution_options(**db.WRITE).begin() as conn:
        return conn.execute(text(sql), params).rowcount


def test_the_counter_follows_every_write_to_the_roster(
    server: RunningServer, cli: Cli, seed: Seed, env: Env, mailbox: Mailbox, clock: FakeClock
) -> None:
    cabinet = server.cabinet
    tremblay, gagnon = firm_id(env, seed.firm), firm_id(env, seed.other_firm)
    marie = user_id(env, seed.accountant)
    before: Counts = kept_counts(env)
    assert before == {}

    def step(expected_change: Counts) -> None:
        """The counter is exact, and moved as the step should have moved it (so a step that wrote
        nothing, or a counter that followed nothing, fails here)."""
        nonlocal before
        after = kept_counts(env)
        change = {key: after.get(key, 0) - before.get(key, 0) for key in after.keys() | before.keys()}
        assert {key: n for key, n in change.items() if n} == expected_change
        before = after

    # Added at the CLI: no subscription, a direct-discount trial, wholesale waiting for its setup.
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", seed.company, "--billing", "none")
    step({(tremblay, "active", "none"): 1})
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Café Direct",
        "--email", "lea@cafe.example", "--billing", "direct", "--product", "qbo-simple-start")
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Café Tardif",
        "--email", "paul@tardif.example", "--billing", "direct", "--product", "qbo-simple-start")
    step({(tremblay, "trial", "direct"): 2})
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Garage Lévesque",
        "--email", "marc@garage.example", "--billing", "wholesale", "--product", "qbo-essentials")
    step({(tremblay, "setup pending", "wholesale"): 1})
    # Added through the domain (as the web page does), to the other firm.
    cabinet.onboarding.add_client(gagnon, NewClient(kind="individual", name="Jean Roy", billing="none"),
                                  None, "operator", "cli")
    step({(gagnon, "active", "none"): 1})

    # The setup completed: setup pending -> active.
    setup = any_link_in(mailbox.wait("marc@garage.example", subject="primary admin")[0])
    cabinet.onboarding.accept_setup(token_of(setup), "Marc Lévesque")
    step({(tremblay, "setup pending", "wholesale"): -1, (tremblay, "active", "wholesale"): 1})

    # Payment details for one trial: trial -> active.
    payment = any_link_in(mailbox.wait("lea@cafe.example", subject="payment")[0])
    cabinet.onboarding.record_payment_details(token_of(payment), "Léa Café")
    step({(tremblay, "trial", "direct"): -1, (tremblay, "active", "direct"): 1})

    # An invitation accepted: merged with the entry added without QuickBooks (no subscription ->
    # the company's self-paid), then the same company accepted by the other firm (a new entry).
    sent = cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output
    cabinet.roster.accept_invitation(token_of(sent.split()[-1]), marie, None, channel="cli")
    step({(tremblay, "active", "none"): -1, (tremblay, "active", "self-paid"): 1})
    cli("staff", "add", "luc@gagnon.example", "--name", "Luc Gagnon", "--firm", seed.other_firm, "--password-stdin",
        input="correct horse battery staple\n")
    sent = cli("invitation", "send", "--company", seed.company, "--email", "luc@gagnon.example").output
    cabinet.roster.accept_invitation(token_of(sent.split()[-1]), user_id(env, "luc@gagnon.example"), None,
                                     channel="cli")
    step({(gagnon, "active", "self-paid"): 1})

    # A billing transfer completed: self-paid -> wholesale, for that firm's entry only.
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    transfer = any_link_in(mailbox.wait(seed.accountant, subject="transfer")[-1])
    cabinet.transfers.complete(token_of(transfer), marie)
    step({(tremblay, "active", "self-paid"): -1, (tremblay, "active", "wholesale"): 1})

    # A contact edit moves nothing.
    cli("client", "edit", "--firm", seed.firm, "--name", "Café Tardif", "--email", "ventes@tardif.example")
    step({})

    # The other trial lapses (the scheduler, 31 days on): trial -> discount lapsed.
    clock.advance(days=31)
    server.settle()
    step({(tremblay, "trial", "direct"): -1, (tremblay, "discount lapsed", "direct"): 1})

    # Whatever else writes the table: a bulk Core insert, a move to another firm, a delete.
    bulk(server, gagnon, 25, "Bulk")
    step({(gagnon, "active", "none"): 25})
    assert write(server, "UPDATE clients SET firm_id = :firm WHERE name = 'Bulk 00003'", firm=tremblay) == 1
    step({(gagnon, "active", "none"): -1, (tremblay, "active", "none"): 1})
    assert write(server, "DELETE FROM clients WHERE name LIKE 'Bulk 0001%'") == 10
    step({(gagnon, "active", "none"): -10})

    # The pages say the same numbers: the navigation's total, a filter's, the trials in Pending.
    from tests.test_workspace import signed_in

    browser = signed_in(env, seed.accountant)
    roster = browser.get("/clients").text
    total = sum(n for (firm, _, _), n in before.items() if firm == tremblay)
    assert f"{total} clients found." in roster and nav_count(roster, "clients") == total == 5
    assert "1 client found." in browser.get("/clients?status=discount+lapsed").text
    assert "2 clients found." in browser.get("/clients?billing=wholesale").text
    browser.close()


def test_the_navigation_counts_trials_as_pending_lists_them(server: RunningServer, cli: Cli, seed: Seed, env: Env):
    """The navigation's pending number counts the trials from the counter; Pending lists them with
    their company: the same clients (a client is in its trial only with its company)."""
    from tests.test_workspace import signed_in

    for n in range(3):
        cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", f"Café {n}",
            "--email", f"cafe{n}@cafe.example", "--billing", "direct", "--product", "qbo-simple-start",
            "--primary-admin", seed.accountant)
    assert env.sql("SELECT count(*) FROM clients WHERE status = 'trial' AND company_id IS NULL") == [(0,)]
    browser = signed_in(env, seed.accountant)
    page = browser.get("/pending").text
    assert page.count('href="/clients/') == 3 and nav_count(page, "pending") == 3
    browser.close()


def test_the_migration_counts_the_roster_already_there_and_its_downgrade_removes_the_counter(
    tmp_path: Path,
) -> None:
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0015")
        now = datetime(2026, 1, 2, tzinfo=timezone.utc)
        with engine.begin() as conn:
            for firm in (1, 2):
                conn.execute(text("INSERT INTO firms (id, name, name_key, email, created_at) "
                                  "VALUES (:id, :name, :key, 'b@t.example', :now)"),
                             {"id": firm, "name": f"Firm {firm}", "key": f"firm {firm}", "now": now})
            rows = [(1, "active", "none")] * 3 + [(1, "trial", "direct")] * 2 + [(2, "active", "none")] \
                + [(2, "discount lapsed", "direct")]
            for n, (firm, status, billing) in enumerate(rows):
                conn.execute(text("INSERT INTO clients (firm_id, kind, name, name_key, search_key, billing, status, "
                                  "created_at) VALUES (:firm, 'individual', :name, :name, :name, :billing, :status, "
                                  ":now)"),
                             {"firm": firm, "name": f"client {n}", "billing": billing, "status": status, "now": now})
        db.upgrade(engine)
        with engine.connect() as conn:
            kept = set(conn.execute(text(SUMMED)).all())
        assert kept == {(1, "active", "none", 3), (1, "trial", "direct", 2), (2, "active", "none", 1),
                        (2, "discount lapsed", "direct", 1)}
        # ...and from then on the triggers keep it.
        with engine.begin() as conn:
            conn.execute(text("UPDATE clients SET status = 'active' WHERE firm_id = 1 AND status = 'trial'"))
        with engine.connect() as conn:
            kept = set(conn.execute(text(SUMMED)).all())
        assert (1, "trial", "direct", 0) in kept and (1, "active", "direct", 2) in kept

        downgrade(engine, "0015")
        assert "firm_client_counts" not in inspect(engine).get_table_names()
        with engine.begin() as conn:  # the roster still takes writes (no trigger left behind)
            conn.execute(text("INSERT INTO clients (firm_id, kind, name, name_key, search_key, billing, status, "
                              "created_at) VALUES (1, 'individual', 'après', 'après', 'apres', 'none', 'active', "
                              ":now)"), {"now": now})
            conn.execute(text("UPDATE clients SET billing = 'direct' WHERE name = 'après'"))
            conn.execute(text("DELETE FROM clients WHERE name = 'après'"))
            if engine.dialect.name == "postgresql":
                assert conn.execute(text("SELECT count(*) FROM pg_proc WHERE proname = 'firm_client_counts_change'"
                                         )).scalar() == 0
    finally:
        engine.dispose()


def downgrade(engine: Any, revision: str) -> None:
    from alembic import command

    cfg = db.alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.connect() as connection, connection.begin():
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


# -- the race -----------------------------------------------------------------------------------------


@pytest.mark.skipif("CABINET_TEST_DATABASE_URL" not in __import__("os").environ,
                    reason="PostgreSQL's concurrent writers (SQLite has one writer at a time)")
def test_concurrent_adds_and_moves_of_the_same_firms_clients_all_commit_and_stay_counted(
    cli: Cli, seed: Seed, env: Env
) -> None:
    """Eight connections at once, each transaction adding clients and moving others between two firms
    and between statuses, in opposite directions (the counter rows they touch overlap, in opposite
    orders): none fails (no deadlock, no unique violation on a counter row), and the counter equals
    COUNT(*) afterwards."""
    url = load_config(env.config_path).database_url
    engine = create_engine(url, pool_size=10, max_overflow=0)
    one, two = firm_id(env, seed.firm), firm_id(env, seed.other_firm)
    workers, rounds = 8, 25
    now = datetime.now(timezone.utc)
    # Each worker owns 4 clients (2 in each firm) that it moves; nobody else touches them.
    with engine.begin() as conn:
        conn.execute(insert(Client), [
            {"firm_id": one if n % 2 else two, "kind": "individual", "name": f"w{w} own {n}",
             "name_key": f"w{w} own {n}", "search_key": f"w{w} own {n}", "billing": "none", "status": "active",
             "created_at": now}
            for w in range(workers) for n in range(4)
        ])
    barrier = threading.Barrier(workers)
    failures: list[BaseException] = []

    def work(w: int) -> None:
        chance = random.Random(w)
        try:
            barrier.wait()
            for r in range(rounds):
                with engine.begin() as conn:
                    # Swap the firms of this worker's clients (both directions in one statement) ...
                    conn.execute(text("UPDATE clients SET firm_id = CASE WHEN firm_id = :one THEN :two ELSE :one END, "
                                      "status = CASE WHEN status = 'active' THEN 'trial' ELSE 'active' END "
                                      "WHERE name LIKE :mine"), {"one": one, "two": two, "mine": f"w{w} own %"})
                    # ... and add a client to one firm or the other, in a key the others move through.
                    firm = chance.choice((one, two))
                    conn.execute(insert(Client), {
                        "firm_id": firm, "kind": "individual", "name": f"w{w} new {r}", "name_key": f"w{w} new {r}",
                        "search_key": f"w{w} new {r}", "billing": "none",
                        "status": chance.choice(("active", "trial")), "created_at": now})
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert failures == []
    kept = kept_counts(env)
    assert sum(kept.values()) == workers * (4 + rounds)


def insert_client(conn: Any, firm: int, name: str, status: str = "active", billing: str = "none") -> None:
    conn.execute(text("INSERT INTO clients (firm_id, kind, name, name_key, search_key, billing, status, created_at) "
                      "VALUES (:firm, 'individual', :name, :name, :name, :billing, :status, :now)"),
                 {"firm": firm, "name": name, "billing": billing, "status": status,
                  "now": datetime(2026, 1, 2, tzinfo=timezone.utc)})


def counted_and_kept(engine: Any) -> tuple[Counts, Counts]:
    with engine.connect() as conn:
        counted = {(f, s, b): n for f, s, b, n in conn.execute(text(
            "SELECT firm_id, status, billing, count(*) FROM clients GROUP BY firm_id, status, billing"))}
        kept = {(f, s, b): int(n) for f, s, b, n in conn.execute(text(SUMMED)) if n}
    return counted, kept


def test_the_slots_keep_the_numbers_of_0016_and_give_them_back_on_downgrade(tmp_path: Path) -> None:
    """0016 -> 0017 keeps every key's number (in slot 0); the slots' triggers keep it through writes
    in several transactions (several slots on PostgreSQL); the downgrade folds them into one row per
    key, and 0016's triggers keep it from there."""
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0016")
        with engine.begin() as conn:
            for firm in (1, 2):
                conn.execute(text("INSERT INTO firms (id, name, name_key, email, created_at) "
                                  "VALUES (:id, :name, :key, 'b@t.example', :now)"),
                             {"id": firm, "name": f"Firm {firm}", "key": f"firm {firm}",
                              "now": datetime(2026, 1, 2, tzinfo=timezone.utc)})
            for n in range(5):
                insert_client(conn, 1, f"before {n}", status="trial" if n < 2 else "active")
            insert_client(conn, 2, "before 9")
        counted, kept = counted_and_kept(engine)
        assert kept == counted == {(1, "trial", "none"): 2, (1, "active", "none"): 3, (2, "active", "none"): 1}

        db.upgrade(engine)
        with engine.connect() as conn:
            rows = set(conn.execute(text("SELECT firm_id, status, billing, slot, clients FROM firm_client_counts")))
        assert rows == {(1, "trial", "none", 0, 2), (1, "active", "none", 0, 3), (2, "active", "none", 0, 1)}
        # Writes in separate transactions: adds, a move to another firm and status, a delete.
        for n in range(6):
            with engine.begin() as conn:
                insert_client(conn, 1 + n % 2, f"after {n}")
        with engine.begin() as conn:
            conn.execute(text("UPDATE clients SET firm_id = 2, status = 'trial' WHERE name = 'before 3'"))
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM clients WHERE name IN ('before 0', 'after 1')"))
        counted, kept = counted_and_kept(engine)
        assert kept == counted == {(1, "trial", "none"): 1, (1, "active", "none"): 5, (2, "active", "none"): 3,
                                   (2, "trial", "none"): 1}
        with engine.connect() as conn:
            slots = {s for (s,) in conn.execute(text("SELECT DISTINCT slot FROM firm_client_counts"))}
        assert slots == {0} if engine.dialect.name == "sqlite" else len(slots) > 1

        downgrade(engine, "0016")
        assert "slot" not in {c["name"] for c in inspect(engine).get_columns("firm_client_counts")}
        with engine.connect() as conn:
            rows = {(f, s, b): n for f, s, b, n in conn.execute(text(
                "SELECT firm_id, status, billing, clients FROM firm_client_counts"))}
        assert {key: n for key, n in rows.items() if n} == counted  # one row per key, folded
        with engine.begin() as conn:  # 0016's triggers keep it from there
            insert_client(conn, 2, "after downgrade", status="trial")
            conn.execute(text("UPDATE clients SET status = 'trial' WHERE name = 'after 0'"))
        counted, kept = counted_and_kept(engine)
        assert kept == counted and counted[(2, "trial", "none")] == 2 and counted[(1, "trial", "none")] == 2
        db.upgrade(engine)  # and up again
        assert counted_and_kept(engine)[1] == counted
    finally:
        engine.dispose()


@pytest.mark.skipif("CABINET_TEST_DATABASE_URL" not in __import__("os").environ,
                    reason="PostgreSQL's concurrent writers (SQLite has one writer at a time)")
def test_two_open_transactions_adding_a_client_to_the_same_key_do_not_wait_for_each_other(
    seed: Seed, env: Env
) -> None:
    """The first transaction adds a client to a firm and stays open; the second adds one with the same
    firm, status and billing: its INSERT returns without waiting for the first's counter row (its
    ``lock_timeout`` fails it at once if it waits; on 0016's one row per key, it waited). The second
    is taken in another slot than the first (up to 16 open transactions are, as their ids follow
    each other; two whose ids are 16 apart share a slot and serialise, as every one did before)."""
    url = load_config(env.config_path).database_url
    engine = create_engine(url, pool_size=2, max_overflow=0)
    firm = firm_id(env, seed.firm)
    slot_of = text("SELECT mod(txid_current(), 16)")
    try:
        with engine.connect() as first, engine.connect() as second:
            with first.begin():
                insert_client(first, firm, "first")
                first_slot = first.execute(slot_of).scalar()
                while True:  # another transaction on the server may have taken the ids between
                    second.begin()
                    if second.execute(slot_of).scalar() != first_slot:
                        break
                    second.rollback()
                second.execute(text("SET LOCAL lock_timeout = '50ms'"))
                insert_client(second, firm, "second")  # would wait for the first's COMMIT on 0016
                second.commit()
        assert kept_counts(env) == {(firm, "active", "none"): 2}
    finally:
        engine.dispose()
