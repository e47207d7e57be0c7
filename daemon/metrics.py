"""Prometheus metrics (prometheus-client), in a registry of this process's own.

Latency and link clicks are counted where they happen (the HTTP adapter, into
``RequestCounts``: plain numbers, shown as prometheus-client's Histogram and
Counter show theirs), send attempts and retries where they happen (the outbox
worker, per process).
Everything about mail, invitations and transfers is read from the database (so
the figures are the same whichever instance is scraped and survive restarts),
in one aggregated read reused for ``max_age`` seconds, not on every scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock, as_utc
from daemon.models import BillingTransfer, InboundMessage, Invitation, JobFailure, OutboxMessage
from mailer.outbox import OutboxStats


_FAILURES_HELP = "Scheduled-job rows that failed, by job and state (retrying or parked)"


@dataclass(frozen=True)
class _Snapshot:
    """The database's figures at one moment: one aggregated read, shared by the scrapes that follow."""

    taken: float  # time.monotonic()
    emails: list[tuple[str, int]]
    depth: int
    oldest: datetime | None
    inbound: list[tuple[str | None, str, int]]  # kind None: not classified yet
    invitations: list[tuple[str, int]]
    failures: list[tuple[str, bool, int]]
    transfers: list[tuple[str, int]]


class DatabaseCollector(Collector):
    """Mail, invitations and transfers by state, read from the database at most every ``max_age`` seconds.

    Counting whole tables took 0.25 s at a million rows, on every scrape of every
    Prometheus (and every instance): the figures are now read in one go and reused
    until they are ``max_age`` old, so scraping costs nothing in between. The age
    of the oldest queued email is still computed at each scrape.
    """

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, max_age: float = 15.0) -> None:
        self._sessions = sessions
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def _read(self) -> _Snapshot:
        with self._sessions() as s:
            emails = [(state, count) for state, count in
                      s.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state))]
            depth, oldest = s.execute(
                select(func.count(), func.min(OutboxMessage.created_at)).where(OutboxMessage.state == "pending")
            ).one()
            inbound = [(kind, state, count) for kind, state, count in s.execute(
                select(InboundMessage.kind, InboundMessage.state, func.count())
                .group_by(InboundMessage.kind, InboundMessage.state)
            )]
            invitations = [(state, count) for state, count in
                           s.execute(select(Invitation.state, func.count()).group_by(Invitation.state))]
            failures = [(job, bool(parked), count) for job, parked, count in s.execute(
                select(JobFailure.job, JobFailure.parked, func.count()).group_by(JobFailure.job, JobFailure.parked)
            )]
            transfers = [(state, count) for state, count in
                         s.execute(select(BillingTransfer.state, func.count()).group_by(BillingTransfer.state))]
        if oldest is not None and not isinstance(oldest, datetime):
            oldest = datetime.fromisoformat(str(oldest))  # aggregates bypass the column type: SQLite hands back text
        return _Snapshot(time.monotonic(), emails, depth, as_utc(oldest) if oldest else None, inbound,
                         invitations, failures, transfers)

    def snapshot(self) -> _Snapshot:
        with self._lock:  # concurrent scrapes share one read
            current = self._snapshot
            if current is None or time.monotonic() - current.taken >= self._max_age:
                current = self._snapshot = self._read()
            return current

    def describe(self) -> Iterator[Metric]:
        # The names alone, for registration: without this the registry would read the database
        # (and keep that snapshot) when the daemon starts.
        yield GaugeMetricFamily("cabinet_emails", "Outbound emails by state (queued = pending)", labels=["state"])
        yield GaugeMetricFamily("cabinet_outbox_depth", "Emails waiting to be sent")
        yield GaugeMetricFamily("cabinet_outbox_oldest_age_seconds", "Age of the oldest queued email")
        yield GaugeMetricFamily("cabinet_inbound_messages", "Inbound messages by kind and state", labels=["kind", "state"])
        yield GaugeMetricFamily("cabinet_invitations", "Invitations by state", labels=["state"])
        yield GaugeMetricFamily("cabinet_job_failures", _FAILURES_HELP, labels=["job", "state"])
        yield GaugeMetricFamily("cabinet_billing_transfers", "Billing transfers by state", labels=["state"])

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        emails = GaugeMetricFamily("cabinet_emails", "Outbound emails by state (queued = pending)", labels=["state"])
        for state, count in snap.emails:
            emails.add_metric(["queued" if state == "pending" else state], count)
        yield emails
        yield GaugeMetricFamily("cabinet_outbox_depth", "Emails waiting to be sent", value=snap.depth)
        age = (self._clock.now() - snap.oldest).total_seconds() if snap.oldest is not None else 0.0
        yield GaugeMetricFamily("cabinet_outbox_oldest_age_seconds", "Age of the oldest queued email", value=age)
        inbound = GaugeMetricFamily("cabinet_inbound_messages", "Inbound messages by kind and state", labels=["kind", "state"])
        for kind, state, count in snap.inbound:
            inbound.add_metric([kind or "unclassified", state], count)
        yield inbound
        invitations = GaugeMetricFamily("cabinet_invitations", "Invitations by state", labels=["state"])
        for state, count in snap.invitations:
            invitations.add_metric([state], count)
        yield invitations
        failures = GaugeMetricFamily("cabinet_job_failures", _FAILURES_HELP, labels=["job", "state"])
        for job, parked, count in snap.failures:
            failures.add_metric([job, "parked" if parked else "retrying"], count)
        yield failures
        transfers = GaugeMetricFamily("cabinet_billing_transfers", "Billing transfers by state", labels=["state"])
        for state, count in snap.transfers:
            transfers.add_metric([state], count)
        yield transfers


class OutboxStatsCollector(Collector):
    """This process's send attempts and retries, counted by the worker as it goes (no table scan)."""

    def __init__(self, stats: OutboxStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "cabinet_outbox_attempts", "Send attempts by this instance, by outcome "
            "(sent, deferred = will retry, bounced = refused for good, failed = gave up, lost = claim lost)",
            labels=["outcome"],
        )
        for outcome in ("sent", "deferred", "bounced", "failed", "lost"):
            attempts.add_metric([outcome], self._stats.attempts[outcome])
        yield attempts
        yield CounterMetricFamily(
            "cabinet_outbox_retries", "Send attempts by this instance at an email tried before",
            value=self._stats.retries,
        )


#: The latency histogram's upper bounds (prometheus-client's default buckets, +Inf last).
LATENCY_BOUNDS: tuple[float, ...] = tuple(float(bound) for bound in Histogram.DEFAULT_BUCKETS)
_REQUESTS = ("cabinet_http_request_duration_seconds", "HTTP request latency", ("route", "method"))
_LINKS = ("cabinet_links", "Emailed links opened (GET) and acted on (POST)", ("purpose", "action"))


class RequestCounts(Collector):
    """Request latency per (route, method) and emailed links' clicks per (purpose, action), counted as
    plain numbers by the HTTP adapter and shown at scrape time exactly as prometheus-client's
    ``Histogram`` and ``Counter`` show theirs (names, labels, buckets, ``_created``; a test compares).

    Those take a lock per bucket and per value on every observation, behind two Python calls each: a
    link page paid for them on every request. Here a series is a list the event loop adds to, a request
    is a bisect and three additions, and a scrape (in a thread) copies each list in one step, which the
    GIL keeps whole: only the event loop counts (``daemon.web._measure``)."""

    def __init__(self) -> None:
        # Per label values: the latency buckets' counts (not cumulative, +Inf last) then the sum of
        # latencies; a link's count; and when each series began (``_created``).
        self._latency: dict[tuple[str, str], list[float]] = {}
        self._clicks: dict[tuple[str, str], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def latency(self, route: str, method: str) -> list[float]:
        """The series of (route, method), new or already counting: ``observe`` adds to it."""
        series = self._latency.get((route, method))
        if series is None:
            self._created[("latency", route, method)] = time.time()
            series = self._latency[(route, method)] = [0.0] * (len(LATENCY_BOUNDS) + 1)
        return series

    def clicks(self, purpose: str, action: str) -> list[float]:
        """The count of (purpose, action): its one value is added to by the caller."""
        series = self._clicks.get((purpose, action))
        if series is None:
            self._created[("clicks", purpose, action)] = time.time()
            series = self._clicks[(purpose, action)] = [0.0]
        return series

    def describe(self) -> Iterator[Metric]:
        yield Metric(_REQUESTS[0], _REQUESTS[1], "histogram")
        yield Metric(_LINKS[0], _LINKS[1], "counter")

    def collect(self) -> Iterator[Metric]:
        created = getattr(prometheus_metrics, "_use_created", True)  # PROMETHEUS_DISABLE_CREATED_SERIES
        name, documentation, label_names = _REQUESTS
        requests = Metric(name, documentation, "histogram")
        for labels, series in list(self._latency.items()):
            counts = list(series)  # one step under the GIL: the event loop's additions land before or after
            values = dict(zip(label_names, labels))
            total = 0.0
            for bound, count in zip(LATENCY_BOUNDS, counts):
                total += count
                requests.add_sample(name + "_bucket", {**values, "le": floatToGoString(bound)}, total)
            requests.add_sample(name + "_count", values, total)
            requests.add_sample(name + "_sum", values, counts[-1])
            if created:
                requests.add_sample(name + "_created", values, self._created[("latency", *labels)])
        yield requests
        name, documentation, label_names = _LINKS
        links = Metric(name, documentation, "counter")
        for labels, series in list(self._clicks.items()):
            values = dict(zip(label_names, labels))
            links.add_sample(name + "_total", values, series[0])
            if created:
                links.add_sample(name + "_created", values, self._created[("clicks", *labels)])
        yield links


class Metrics:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, outbox: OutboxStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counts = RequestCounts()
        self.registry.register(self.counts)
        self.registry.register(DatabaseCollector(sessions, clock))
        if outbox is not None:
            self.registry.register(OutboxStatsCollector(outbox))
