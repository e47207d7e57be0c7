"""Inbound processing in batches, and stores first: each message its own outcome in a batch written
in one transaction, stores answered only once durable while processing runs, a backlog worked through
without waiting for the next poll."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from email.policy import SMTP as SMTP_POLICY
from typing import Any, Iterator

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError

from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.loops import Repeater
from daemon.models import OutboxMessage
from daemon.tokens import Purpose
from tests.conftest import PASSWORD, Cli, Env, FakeClock
from tests.inbound_helpers import TRUSTED_MTA, execute, reply, wait_processed

COMPANY, ACCOUNTANT = "Boulangerie Roy", "marie@tremblay.example"


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[inbound]\ntrusted_authserv_ids = ["{TRUSTED_MTA}"]\n')
    return env


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    """A Cabinet with no daemon running: only the test processes (no processor takes a message first)."""
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("staff", "add", ACCOUNTANT, "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    cli("company", "add", COMPANY, "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy", "--locale", "en")
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


def reply_address(cabinet: Cabinet) -> str:
    sent = cabinet.roster.send_invitation(COMPANY, ACCOUNTANT)
    with cabinet.sessions() as s:
        ref = s.scalar(select(OutboxMessage.ref).where(OutboxMessage.invitation_id == sent.id))
    assert ref is not None
    return cabinet.outbox.address(Purpose.REPLY, ref)


def no_invitation_changes(env: Env) -> None:
    """Every UPDATE of an invitation fails, as a database error (the fault of test_inbound's quarantine test)."""
    try:
        execute(env, "CREATE TRIGGER no_accept BEFORE UPDATE ON invitations BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    except Exception:  # PostgreSQL
        execute(env, "CREATE FUNCTION no_accept() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql")
        execute(env, "CREATE TRIGGER no_accept BEFORE UPDATE ON invitations FOR EACH ROW EXECUTE FUNCTION no_accept()")


def test_a_message_that_fails_in_a_batch_fails_alone_and_the_batch_commits_once(cabinet: Cabinet, env: Env) -> None:
    reply_to = reply_address(cabinet)
    no_invitation_changes(env)
    raws = [reply(reply_to, ACCOUNTANT, body).as_bytes(policy=SMTP_POLICY) for body in ("note one", "accept", "note two")]
    ids = [cabinet.inbound.store(ACCOUNTANT, [reply_to], raw) for raw in raws]
    commits = [0]

    def counted(_connection: Any) -> None:
        commits[0] += 1

    event.listen(cabinet.engine, "commit", counted)
    try:
        assert cabinet.inbound.process_due() == 2
    finally:
        event.remove(cabinet.engine, "commit", counted)
    rows = env.sql("SELECT id, state, kind, attempts, last_error FROM inbound ORDER BY id")
    assert [r[0] for r in rows] == ids
    (one, one_state, one_kind, _, _), (bad, bad_state, bad_kind, bad_attempts, error), (two, two_state, two_kind, _, _) = rows
    assert (one_state, one_kind, two_state, two_kind) == ("processed", "reply", "processed", "reply")
    # The accept's attempt rolled back alone (its savepoint): still received, to be retried, with the reason.
    assert (bad_state, bad_kind, bad_attempts) == ("received", None, 1) and "disk on fire" in error
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'reply.received'") == [(2,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'") == [(2,)]
    assert env.sql("SELECT state FROM invitations") == [("pending",)]
    # The two good ones in one transaction; the failed attempt recorded in another.
    assert commits == [2]


def test_a_duplicate_in_the_same_batch_has_no_second_effect(cabinet: Cabinet, env: Env) -> None:
    reply_to = reply_address(cabinet)
    message = reply(reply_to, ACCOUNTANT, "see you Monday")
    first = message.as_bytes(policy=SMTP_POLICY)
    del message["Date"]
    message["Date"] = "Mon, 30 Nov 2026 12:00:00 +0000"  # other bytes, same Message-ID: a resend
    again = message.as_bytes(policy=SMTP_POLICY)
    cabinet.inbound.store(ACCOUNTANT, [reply_to], first)
    cabinet.inbound.store(ACCOUNTANT, [reply_to], again)
    assert cabinet.inbound.process_due() == 2
    assert [r[1:3] for r in env.sql("SELECT id, state, kind FROM inbound ORDER BY id")] == [
        ("processed", "reply"), ("duplicate", "duplicate")]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'") == [(1,)]


def test_stores_during_processing_are_answered_only_once_durable(server: Any, env: Env, cli: Cli) -> None:
    cabinet: Cabinet = server.cabinet
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("staff", "add", ACCOUNTANT, "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    cli("company", "add", COMPANY, "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy", "--locale", "en")
    reply_to = reply_address(cabinet)
    # A backlog the daemon's processor works through while the SMTP deliveries below arrive.
    backlog = [reply(reply_to, ACCOUNTANT, f"backlog {n}").as_bytes(policy=SMTP_POLICY) for n in range(100)]
    cabinet.inbound.store_many([(ACCOUNTANT, [reply_to], raw) for raw in backlog])
    errors: list[BaseException] = []
    missing: list[str] = []

    def send(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
                for k in range(6):
                    message = reply(reply_to, ACCOUNTANT, f"note {n}-{k}")
                    assert smtp.sendmail(ACCOUNTANT, [reply_to], message.as_bytes(policy=SMTP_POLICY)) == {}
                    # The 250 came: the row is committed, seen from another connection right now.
                    if env.sql("SELECT count(*) FROM inbound WHERE message_id = :m", m=message["Message-ID"]) != [(1,)]:
                        missing.append(message["Message-ID"])
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and missing == []
    rows = wait_processed(env, 124)
    assert all(state == "processed" and kind == "reply" for _, state, kind, _ in rows)
    assert env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'") == [(124,)]


def test_a_backlog_is_worked_through_without_waiting_for_the_next_poll() -> None:
    """``again``: a pass that did work runs again at once (the interval here is an hour)."""
    passes = iter([32, 32, 5, 0])
    seen: list[int] = []
    fourth = threading.Event()

    def job() -> int:
        seen.append(next(passes))
        if len(seen) == 4:
            fourth.set()
        return seen[-1]

    async def run() -> None:
        repeater = Repeater("test", job, interval=3600, again=bool)
        task = asyncio.create_task(repeater.run())
        # The fourth pass comes only if each pass that did work ran the next at once (no hour's wait).
        assert await asyncio.to_thread(fourth.wait, 60)
        repeater.stop()
        await asyncio.wait_for(task, timeout=60)

    asyncio.run(asyncio.wait_for(run(), timeout=120))
    assert seen == [32, 32, 5, 0]


def fail_at_commit(env: Env, table: str, condition: str) -> None:
    """A real fault at COMMIT: a row of ``table`` matching ``condition`` (on NEW) makes the transaction
    that wrote it fail when it commits, not when it inserts (a deferred check, as a full disk fails the
    commit). PostgreSQL: a deferred constraint trigger; SQLite: a deferred foreign key to no row."""
    try:
        execute(env, "CREATE TABLE fault_parent (id INTEGER PRIMARY KEY)")
        execute(env, "CREATE TABLE fault_child (parent_id INTEGER REFERENCES fault_parent(id) DEFERRABLE INITIALLY DEFERRED)")
        execute(env, f"CREATE TRIGGER fault_at_commit AFTER INSERT ON {table} WHEN {condition} "
                     "BEGIN INSERT INTO fault_child VALUES (42); END")
    except Exception:  # PostgreSQL (its CREATE TABLE above went through: the trigger's syntax is SQLite's)
        execute(env, "CREATE FUNCTION fault_at_commit() RETURNS trigger AS $$ BEGIN "
                     "RAISE EXCEPTION 'disk on fire at commit'; END $$ LANGUAGE plpgsql")
        execute(env, f"CREATE CONSTRAINT TRIGGER fault_at_commit AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED "
                     f"FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION fault_at_commit()")


def test_a_store_batch_whose_commit_fails_is_stored_message_by_message(cabinet: Cabinet, env: Env) -> None:
    """The listener's concurrent DATAs share one transaction; when its commit fails, each message is
    stored on its own: the bad one alone gets its error (a 451), the others one row each."""
    reply_to = reply_address(cabinet)
    fail_at_commit(env, "inbound", "NEW.mail_from = 'bad@roy.example'")
    raws = [reply(reply_to, ACCOUNTANT, f"note {i}").as_bytes(policy=SMTP_POLICY) for i in range(4)]
    messages = [(ACCOUNTANT, [reply_to], raws[0]), ("bad@roy.example", [reply_to], raws[1]),
                (ACCOUNTANT, [reply_to], raws[2]), (ACCOUNTANT, [reply_to], raws[0]),  # the same bytes again
                (ACCOUNTANT, [reply_to], raws[3])]
    outcomes = cabinet.inbound.store_many(messages)
    assert isinstance(outcomes[1], SQLAlchemyError)  # the listener answers it 451; the sender retries
    good = [outcomes[i] for i in (0, 2, 3, 4)]
    assert all(isinstance(i, int) for i in good) and good[0] == good[2] and len(set(good)) == 3
    rows = env.sql("SELECT id, mail_from FROM inbound ORDER BY id")
    assert sorted(r[0] for r in rows) == sorted(set(good)) and all(r[1] == ACCOUNTANT for r in rows)
    # The same bytes once more (the sender's retry after a lost 250): the first copy's id, no new row.
    assert cabinet.inbound.store_many([(ACCOUNTANT, [reply_to], raws[2]), (ACCOUNTANT, [reply_to], raws[3])]) \
        == [good[1], good[3]]
    assert env.sql("SELECT count(*) FROM inbound") == [(3,)]


def test_a_processing_batch_whose_commit_fails_is_processed_message_by_message(cabinet: Cabinet, env: Env) -> None:
    """Planned replies act together in one transaction; when its commit fails, each acts on its own:
    the bad one's attempt fails alone (still received, retried later, the reason kept), the others are
    processed once (one event, one forward each)."""
    reply_to = reply_address(cabinet)
    bodies = ["note one", "note two, the one that fails", "note three"]
    ids = [cabinet.inbound.store(ACCOUNTANT, [reply_to], reply(reply_to, ACCOUNTANT, body).as_bytes(policy=SMTP_POLICY))
           for body in bodies]
    fail_at_commit(env, "events", "NEW.detail LIKE '%the one that fails%'")
    assert cabinet.inbound.process_due() == 2
    rows = env.sql("SELECT id, state, kind, attempts, last_error FROM inbound ORDER BY id")
    assert [r[0] for r in rows] == ids
    assert [r[1:4] for r in rows] == [("processed", "reply", 1), ("received", None, 1), ("processed", "reply", 1)]
    assert rows[1][4]
    events = env.sql("SELECT detail FROM events WHERE kind = 'reply.received' ORDER BY id")
    assert len(events) == 2 and "note one" in events[0][0] and "note three" in events[1][0]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'") == [(2,)]
    # Nothing is done twice when the bad one's retry comes round (it fails again; the others stay done).
    assert cabinet.inbound.process(ids[1]) == 0
    assert env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'") == [(2,)]
