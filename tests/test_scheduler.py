"""The scheduled jobs, run by the real scheduler adapter against the real database.

One bad row (a company whose locale has no templates) must not stop the rest:
it is recorded, retried, parked, listed and counted in /metrics. An idle pass
reads a fixed handful of rows and writes nothing, however many trials,
invitations and transfers reached their end before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import event, update

from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.metrics import Metrics
from daemon.models import Company
from daemon.scheduler import MAX_ATTEMPTS, RETRY_MAX, Scheduler
from tests.conftest import Cli, Env, FakeClock, Seed, roster_of


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


def add_direct(cli: Cli, seed: Seed, name: str, email: str) -> None:
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", name, "--email", email,
        "--billing", "direct", "--product", "qbo-simple-start", "--primary-admin", seed.accountant)


def status_of(cli: Cli, seed: Seed, name: str) -> str:
    return next(c["status"] for c in roster_of(cli, seed.firm) if c["name"] == name)


def test_one_failing_row_is_parked_and_the_rest_of_the_sweep_goes_on(
    cabinet: Cabinet, cli: Cli, seed: Seed, env: Env, clock: FakeClock
) -> None:
    add_direct(cli, seed, "Café Direct", "lea@cafe.example")
    add_direct(cli, seed, "Bistro Direct", "sam@bistro.example")
    # A locale with no templates: rendering this company's emails raises TemplateNotFound.
    with cabinet.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE companies SET admin_locale = 'de' WHERE name = 'Café Direct'")
    scheduler = Scheduler(cabinet)
    clock.advance(days=31)
    counts = scheduler.run_due()
    assert counts.get("discounts_lapsed") == 1 and counts.get("job_failures") == 1, (counts, scheduler.failures())
    assert status_of(cli, seed, "Bistro Direct") == "discount lapsed"
    assert status_of(cli, seed, "Café Direct") == "trial"

    (failure,) = json.loads(cli("jobs", "list", "--failed", "--json").output)
    assert failure["job"] == "trial_deadline" and failure["attempts"] == 1 and not failure["parked"]
    assert "TemplateNotFound" in failure["last_error"]

    # Not retried before its time; then retried until parked, and parked rows are left alone.
    assert scheduler.run_due().get("job_failures", 0) == 0
    for _ in range(MAX_ATTEMPTS - 1):
        clock.advance(seconds=RETRY_MAX.total_seconds() + 1)
        assert scheduler.run_due()["job_failures"] == 1
    (failure,) = json.loads(cli("jobs", "list", "--failed", "--json").output)
    assert failure["parked"] and failure["attempts"] == MAX_ATTEMPTS
    clock.advance(days=1)
    assert scheduler.run_due().get("job_failures", 0) == 0
    assert "parked" in cli("jobs", "list", "--failed").output

    metrics = generate_latest(Metrics(cabinet.sessions, cabinet.clock).registry).decode()
    assert 'cabinet_job_failures{job="trial_deadline",state="parked"} 1.0' in metrics

    # Fixed, then retried by the operator: it lapses, and the failure record goes.
    with cabinet.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE companies SET admin_locale = 'en' WHERE name = 'Café Direct'")
    cli("jobs", "retry", "trial_deadline", str(failure["ref_id"]))
    assert scheduler.run_due()["discounts_lapsed"] == 1
    assert status_of(cli, seed, "Café Direct") == "discount lapsed"
    assert json.loads(cli("jobs", "list", "--failed", "--json").output) == []
    cli("jobs", "retry", "trial_deadline", str(failure["ref_id"]), expect=3)
    # A misspelt job is not "no failed row": the message names the jobs there are.
    misspelt = cli("jobs", "retry", "trial_deadlines", str(failure["ref_id"]), expect=1)
    assert "unknown job 'trial_deadlines': one of invitation_expiry, transfer_deadline, trial_deadline" in misspelt.output


class StatementCounter:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.commits = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(" ".join(statement.split()).upper())

    def committed(self, conn: Any) -> None:
        self.commits += 1

    @property
    def writes(self) -> list[str]:
        """The writes, and the write transactions even with nothing in them: SQLite's group writer sends its
        BEGIN IMMEDIATE (and a Core unit its SAVEPOINT) straight to the driver, unseen by the cursor events,
        but every write transaction ends in a COMMIT, the engine's ``commit`` event (a read never commits)."""
        return [s for s in self.statements if s.startswith(("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE"))] + (
            ["COMMIT"] * self.commits)

    @property
    def reads(self) -> list[str]:
        return [s for s in self.statements if s.startswith("SELECT")]


@contextmanager
def counting(cabinet: Cabinet) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    event.listen(cabinet.engine, "before_cursor_execute", counter)
    event.listen(cabinet.engine, "commit", counter.committed)
    try:
        yield counter
    finally:
        event.remove(cabinet.engine, "before_cursor_execute", counter)
        event.remove(cabinet.engine, "commit", counter.committed)


def idle_pass(scheduler: Scheduler, cabinet: Cabinet) -> StatementCounter:
    with counting(cabinet) as counter:
        assert scheduler.run_due() == {}
    return counter


def test_an_idle_pass_writes_nothing_and_reads_the_same_however_many_rows_ended(
    cabinet: Cabinet, cli: Cli, seed: Seed, clock: FakeClock
) -> None:
    scheduler = Scheduler(cabinet)
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    add_direct(cli, seed, "Café Direct", "lea@cafe.example")
    clock.advance(days=31)
    assert scheduler.run_due() == {"invitations_expired": 1, "discounts_lapsed": 1}
    few = idle_pass(scheduler, cabinet)
    assert few.writes == [] and 0 < len(few.reads) <= 6, few.statements

    for n in range(5):
        add_direct(cli, seed, f"Client {n}", f"c{n}@clients.example")
    clock.advance(days=31)
    assert scheduler.run_due() == {"discounts_lapsed": 5}
    many = idle_pass(scheduler, cabinet)
    assert many.writes == [] and many.reads == few.reads, many.statements

    # A trial in its reminder window, once reminded, waits quietly for its next step.
    # (The CLI runs on the system clock: the trial's end is set on this test's clock here.)
    add_direct(cli, seed, "Late Client", "late@clients.example")
    with cabinet.engine.begin() as conn:
        conn.execute(
            update(Company).where(Company.name == "Late Client").values(trial_ends_at=clock.now() + timedelta(days=3))
        )
    assert scheduler.run_due() == {"trial_reminders": 1}
    waiting = idle_pass(scheduler, cabinet)
    assert waiting.writes == [] and waiting.reads == few.reads, waiting.statements
