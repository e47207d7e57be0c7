"""Prometheus metrics (prometheus-client), in a registry of this process's own.

Latency and link clicks are counted where they happen (the HTTP adapter), send
attempts and retries where they happen (the outbox worker, per process).
Everything about mail, invitations and transfers is read from the database at
scrape time, so the figures are the same whichever instance is scraped and
survive restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock, as_utc
from daemon.models import BillingTransfer, InboundMessage, Invitation, JobFailure, OutboxMessage
from mailer.outbox import OutboxStats


class DatabaseCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as s:
            emails = GaugeMetricFamily("cabinet_emails", "Outbound emails by state (queued = pending)", labels=["state"])
            for state, count in s.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)):
                emails.add_metric(["queued" if state == "pending" else state], count)
            yield emails
            depth, oldest = s.execute(
                select(func.count(), func.min(OutboxMessage.created_at)).where(OutboxMessage.state == "pending")
            ).one()
            yield GaugeMetricFamily("cabinet_outbox_depth", "Emails waiting to be sent", value=depth)
            age = 0.0
            if oldest is not None:
                # Aggregates bypass the column type: SQLite hands back text.
                oldest_dt = oldest if isinstance(oldest, datetime) else datetime.fromisoformat(str(oldest))
                age = (self._clock.now() - as_utc(oldest_dt)).total_seconds()
            yield GaugeMetricFamily("cabinet_outbox_oldest_age_seconds", "Age of the oldest queued email", value=age)
            inbound = GaugeMetricFamily("cabinet_inbound_messages", "Inbound messages by kind and state", labels=["kind", "state"])
            for kind, state, count in s.execute(
                select(InboundMessage.kind, InboundMessage.state, func.count()).group_by(InboundMessage.kind, InboundMessage.state)
            ):
                inbound.add_metric([kind or "unclassified", state], count)
            yield inbound
            invitations = GaugeMetricFamily("cabinet_invitations", "Invitations by state", labels=["state"])
            for state, count in s.execute(select(Invitation.state, func.count()).group_by(Invitation.state)):
                invitations.add_metric([state], count)
            yield invitations
            failures = GaugeMetricFamily(
                "cabinet_job_failures", "Scheduled-job rows that failed, by job and state (retrying or parked)",
                labels=["job", "state"],
            )
            for job, parked, count in s.execute(
                select(JobFailure.job, JobFailure.parked, func.count()).group_by(JobFailure.job, JobFailure.parked)
            ):
                failures.add_metric([job, "parked" if parked else "retrying"], count)
            yield failures
            transfers = GaugeMetricFamily("cabinet_billing_transfers", "Billing transfers by state", labels=["state"])
            for state, count in s.execute(select(BillingTransfer.state, func.count()).group_by(BillingTransfer.state)):
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


class Metrics:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, outbox: OutboxStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "cabinet_http_request_duration_seconds", "HTTP request latency", ["route", "method"],
            registry=self.registry,
        )
        self.links = Counter(
            "cabinet_links_total", "Emailed links opened (GET) and acted on (POST)", ["purpose", "action"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(sessions, clock))
        if outbox is not None:
            self.registry.register(OutboxStatsCollector(outbox))
