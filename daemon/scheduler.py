"""The scheduler adapter: runs the domain's deadline sweeps, one row at a time.

Deadlines live in the database (expiry dates, trial ends, transfer windows),
not in memory, so a restart loses nothing; each sweep is idempotent, so a
second run (or a second instance) never sends a reminder twice.

Each row is handled in its own short transaction. A row that fails (a
template missing for a locale, a constraint, a bug) is logged with its job and
id, recorded in ``job_failures``, retried later with a growing delay and,
after ``MAX_ATTEMPTS`` tries, parked until an operator retries it (`cabinet
jobs list --failed`, `cabinet jobs retry`); the rest of the sweep goes on.
Each sweep's query selects only what is due, so an idle pass reads a few
rows and writes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from daemon.app import Cabinet
from daemon.db import write_transaction
from daemon.errors import InvalidInput, NotFound
from daemon.models import JobFailure
from daemon.retention import Retention

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=1)


@dataclass(frozen=True)
class Job:
    name: str
    due: Callable[[datetime], list[int]]
    run: Callable[[int, datetime], str | None]  # the count it adds to, or None when nothing was due


@dataclass(frozen=True)
class FailureView:
    job: str
    ref_id: int
    attempts: int
    parked: bool
    last_error: str
    failed_at: datetime
    next_attempt_at: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "job": self.job, "ref_id": self.ref_id, "attempts": self.attempts, "parked": self.parked,
            "last_error": self.last_error, "failed_at": self.failed_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat(),
        }


def retry_delay(attempts: int) -> timedelta:
    return min(RETRY_BASE * (1 << max(attempts - 1, 0)), RETRY_MAX)


class Scheduler:
    def __init__(self, cabinet: Cabinet) -> None:
        self._cabinet = cabinet
        self._sessions = cabinet.sessions
        self._clock = cabinet.clock
        retention = Retention(cabinet.sessions, cabinet.clock, cabinet.config)
        self.jobs = (
            Job("invitation_expiry", cabinet.roster.due_expiries, cabinet.roster.expire_one),
            Job("transfer_deadline", cabinet.transfers.due_transfers, cabinet.transfers.sweep_transfer),
            Job("trial_deadline", cabinet.onboarding.due_trials, cabinet.onboarding.sweep_trial),
            Job("retention", retention.due, retention.prune_one),
        )

    def run_due(self) -> dict[str, int]:
        """Everything that is due now, once; a failing row is recorded and skipped, the others go on."""
        counts: Counter[str] = Counter()
        now = self._clock.now()
        with self._sessions() as s:
            failures = {(f.job, f.ref_id): f for f in s.scalars(select(JobFailure))}
        for job in self.jobs:
            for ref_id in job.due(now):
                failure = failures.get((job.name, ref_id))
                if failure is not None and (failure.parked or failure.next_attempt_at > now):
                    continue  # parked, or waiting for its retry
                try:
                    outcome = job.run(ref_id, now)
                except Exception as exc:
                    self._failed(job.name, ref_id, exc, failure)
                    counts["job_failures"] += 1
                    continue
                if outcome:
                    counts[outcome] += 1
                if failure is not None:
                    self._cleared(failure.id)
        return dict(counts)

    def _failed(self, job: str, ref_id: int, exc: Exception, failure: JobFailure | None) -> None:
        now = self._clock.now()
        error = f"{type(exc).__name__}: {exc}"[:2000]
        attempts = (failure.attempts if failure else 0) + 1
        parked = attempts >= MAX_ATTEMPTS
        values = dict(
            attempts=attempts, last_error=error, failed_at=now, next_attempt_at=now + retry_delay(attempts), parked=parked
        )
        with write_transaction(self._sessions) as s:
            if failure is None:
                s.add(JobFailure(job=job, ref_id=ref_id, **values))
            else:
                s.execute(update(JobFailure).where(JobFailure.id == failure.id).values(**values))
        log.error(
            "scheduled job %s failed for row %s (attempt %s%s): %s", job, ref_id, attempts,
            "; parked, see `cabinet jobs list --failed`" if parked else "; will retry", error, exc_info=exc,
        )

    def _cleared(self, failure_id: int) -> None:
        with write_transaction(self._sessions) as s:
            s.execute(delete(JobFailure).where(JobFailure.id == failure_id))

    # -- operators ------------------------------------------------------------------

    def failures(self) -> list[FailureView]:
        with self._sessions() as s:
            return [
                FailureView(f.job, f.ref_id, f.attempts, f.parked, f.last_error, f.failed_at, f.next_attempt_at)
                for f in s.scalars(select(JobFailure).order_by(JobFailure.id))
            ]

    def retry(self, job: str, ref_id: int) -> None:
        """Put a parked (or waiting) row back in line: the next pass tries it again."""
        names = [j.name for j in self.jobs]
        if job not in names:  # a misspelt name is not "no failed row": say which names there are
            raise InvalidInput("job.unknown", job=job, choices=", ".join(names))
        with write_transaction(self._sessions) as s:
            failure = s.scalar(select(JobFailure).where(JobFailure.job == job, JobFailure.ref_id == ref_id))
            if failure is None:
                raise NotFound("job.failure_not_found", job=job, ref=ref_id)
            failure.parked, failure.attempts, failure.next_attempt_at = False, 0, self._clock.now()
