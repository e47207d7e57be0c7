"""Sign-in throttling, per address and per client IP, counted in the database.

Per address, a few failures are free (typos); after that each further attempt
must wait twice as long as the one before (1 s, 2 s, 4 s, …), and an attempt
made too early is refused without checking the password and is not counted.
After ``per_address`` failures within the window the address is locked until
the oldest of them leaves the window. Per client IP there is no delay (an
office behind one NAT shares it) but a higher lock threshold, ``per_ip``, so
one client cannot try many addresses either. The same rule applies to every address, existing
or not, so the answers never tell whether an account exists.

The rows live in the database so that several instances on PostgreSQL share
the count; whichever instance answers, the same attempt is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import write_transaction
from daemon.domain import normalise_email
from daemon.errors import InvalidInput, LimitReached
from daemon.models import SignInFailure

FREE_FAILURES = 3
MAX_DELAY = timedelta(minutes=5)


@dataclass(frozen=True)
class ThrottlePolicy:
    window: timedelta
    per_address: int
    per_ip: int


def address_key(email: str) -> str:
    try:
        address = normalise_email(email)
    except InvalidInput:
        address = email.strip().lower()
    return "email:" + address[:320]


def ip_key(ip: str) -> str:
    return "ip:" + ip[:64]


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


class SignInThrottle:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, policy: ThrottlePolicy) -> None:
        self._sessions = sessions
        self._clock = clock
        self._policy = policy

    def check(self, email: str, ip: str) -> None:
        """Raise ``LimitReached`` if an attempt for this address from this IP must not be tried now."""
        now = self._clock.now()
        since = now - self._policy.window
        with self._sessions() as s:
            for key, lock_after, what, slowed in (
                (address_key(email), self._policy.per_address, "signin.locked_address", True),
                (ip_key(ip), self._policy.per_ip, "signin.locked_network", False),
            ):
                times = list(
                    s.scalars(
                        select(SignInFailure.at)
                        .where(SignInFailure.key == key, SignInFailure.at > since)
                        .order_by(SignInFailure.at.desc())
                        .limit(lock_after)
                    )
                )
                self._refuse_if_needed(times, lock_after, now, what, slowed)

    def _refuse_if_needed(
        self, recent_first: list[datetime], lock_after: int, now: datetime, what: str, slowed: bool
    ) -> None:
        count = len(recent_first)
        if count >= lock_after:
            # Locked until the oldest of the last `lock_after` failures leaves the window.
            until = recent_first[lock_after - 1] + self._policy.window
            minutes = math.ceil((until - now).total_seconds() / 60) or 1
            raise LimitReached(what, retry_after=_seconds(until - now), minutes=minutes)
        if slowed and count >= FREE_FAILURES:
            delay = min(timedelta(seconds=2 ** (count - FREE_FAILURES)), MAX_DELAY)
            ready = recent_first[0] + delay
            if now < ready:
                wait = _seconds(ready - now)
                raise LimitReached("signin.wait", retry_after=wait, seconds=wait)

    def record_failure(self, email: str, ip: str) -> None:
        now = self._clock.now()
        with write_transaction(self._sessions) as s:
            s.add_all([SignInFailure(key=address_key(email), at=now), SignInFailure(key=ip_key(ip), at=now)])
            # Forget what no longer counts, while we hold the write lock anyway.
            s.execute(delete(SignInFailure).where(SignInFailure.at <= now - self._policy.window))

    def succeeded(self, email: str) -> None:
        """A right password clears the address's failures; the IP's stay (one account must not reset them)."""
        with write_transaction(self._sessions) as s:
            s.execute(delete(SignInFailure).where(SignInFailure.key == address_key(email)))


class RequestLimit:
    """How often a request that emails someone may be made, per address and per client IP.

    For forms anyone may submit (the start page's "Manage my company"): each
    request is counted, whatever the address, so the limit says nothing about
    whether the address is known. The rows share ``sign_in_failures`` (their keys
    carry ``prefix``, never the sign-in's "email:"/"ip:") and its window, so the
    sign-in's sweep of old rows is right for them too and no table is added.
    """

    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, prefix: str, policy: ThrottlePolicy
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._prefix = prefix
        self._policy = policy

    @property
    def window_seconds(self) -> int:
        return _seconds(self._policy.window)

    def take(self, email: str, ip: str) -> bool:
        """Count one request; False (nothing counted) when the address or the IP has had its share."""
        now = self._clock.now()
        keys = ((f"{self._prefix}-{address_key(email)}", self._policy.per_address),
                (f"{self._prefix}-{ip_key(ip)}", self._policy.per_ip))
        with write_transaction(self._sessions) as s:
            for key, limit in keys:
                recent = s.scalars(
                    select(SignInFailure.id)
                    .where(SignInFailure.key == key, SignInFailure.at > now - self._policy.window)
                    .limit(limit)
                ).all()
                if len(recent) >= limit:
                    return False
            s.add_all([SignInFailure(key=key, at=now) for key, _ in keys])
            s.execute(
                delete(SignInFailure).where(SignInFailure.key.in_([k for k, _ in keys]),
                                            SignInFailure.at <= now - self._policy.window)
            )
            return True
