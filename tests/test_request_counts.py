"""Request latency and link clicks are counted as plain numbers (``daemon.metrics.RequestCounts``) and
scraped exactly as prometheus-client's own Histogram and Counter would show the same observations."""

from __future__ import annotations

import re
from bisect import bisect_left

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from daemon.metrics import LATENCY_BOUNDS, RequestCounts
from tests.conftest import Cli, Env, Mailbox, Seed, link_in

_CREATED = re.compile(r"^(\S+_created\{.*\}) \S+$", re.M)


def _without_created_times(text: str) -> str:
    """The exposition with each ``_created`` sample's value (a time.time() at the series' start) blanked."""
    return _CREATED.sub(r"\1 <time>", text)


def _observe(counts: RequestCounts, route: str, method: str, seconds: float) -> None:
    """What ``daemon.web._measure`` does with a request's latency."""
    series = counts.latency(route, method)
    series[bisect_left(LATENCY_BOUNDS, seconds)] += 1
    series[-1] += seconds


def test_the_scrape_is_what_prometheus_clients_histogram_and_counter_show() -> None:
    theirs = CollectorRegistry(auto_describe=True)
    histogram = Histogram("cabinet_http_request_duration_seconds", "HTTP request latency", ["route", "method"],
                          registry=theirs)
    counter = Counter("cabinet_links_total", "Emailed links opened (GET) and acted on (POST)",
                      ["purpose", "action"], registry=theirs)
    ours = CollectorRegistry(auto_describe=True)
    counts = RequestCounts()
    ours.register(counts)
    # Every bucket's edge and both sides of it, 0, a slow request past the last bound, two routes and methods.
    latencies = [0.0, 0.003, *LATENCY_BOUNDS[:-1], *(b + 1e-9 for b in LATENCY_BOUNDS[:-1]), 12.5, 0.0042]
    for index, seconds in enumerate(latencies):
        route, method = ("/invitations/{token}", "GET") if index % 3 else ("/sign-in", "POST")
        histogram.labels(route, method).observe(seconds)
        _observe(counts, route, method, seconds)
    for purpose, action, times in [("invite", "opened", 5), ("invite", "acted", 2), ("manage", "opened", 1)]:
        for _ in range(times):
            counter.labels(purpose, action).inc()
            counts.clicks(purpose, action)[0] += 1
    expected = _without_created_times(generate_latest(theirs).decode())
    assert "_created{" in expected and "cabinet_links_total{" in expected  # the comparison covers them
    assert _without_created_times(generate_latest(ours).decode()) == expected


def test_an_empty_scrape_shows_the_two_families_as_prometheus_client_does() -> None:
    theirs = CollectorRegistry(auto_describe=True)
    Histogram("cabinet_http_request_duration_seconds", "HTTP request latency", ["route", "method"], registry=theirs)
    Counter("cabinet_links_total", "Emailed links opened (GET) and acted on (POST)", ["purpose", "action"],
            registry=theirs)
    ours = CollectorRegistry(auto_describe=True)
    ours.register(RequestCounts())
    assert generate_latest(ours) == generate_latest(theirs)


def test_metrics_count_every_link_page_served(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[0])
    opened = 7
    for _ in range(opened):
        assert httpx.get(link, timeout=60).status_code == 200
    assert httpx.head(link, timeout=60).status_code == 200
    assert httpx.get(f"{env.base_url}/no-such-page", timeout=60).status_code == 404
    text = httpx.get(f"http://127.0.0.1:{server.service.metrics_port}/metrics", timeout=60).text
    page = 'route="/invitations/{token}"'  # labels are written in name order
    assert f'cabinet_http_request_duration_seconds_count{{method="GET",{page}}} {float(opened)}' in text
    assert f'cabinet_http_request_duration_seconds_bucket{{le="+Inf",method="GET",{page}}} {float(opened)}' in text
    assert f'cabinet_http_request_duration_seconds_count{{method="HEAD",{page}}} 1.0' in text
    assert 'cabinet_http_request_duration_seconds_count{method="GET",route="unmatched"} 1.0' in text
    # HEAD shows the page too, but only GET and POST are clicks.
    assert f'cabinet_links_total{{action="opened",purpose="invite"}} {float(opened)}' in text
    assert link.rsplit("/", 1)[1] not in text  # no tokens in labels
