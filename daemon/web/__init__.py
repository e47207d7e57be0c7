"""The HTTP adapter: link landing pages, sign-in, and health.

GET and HEAD only show; every POST carries a CSRF token checked by the
middleware before any handler runs. Domain errors become pages here and
nowhere else.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from typing import Any, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiohttp import web

from daemon.app import Cabinet
from daemon.auth import WebSessions
from daemon.errors import CabinetError
from daemon.faults import storage_fault
from daemon.health import Health
from daemon.link_opens import is_emailed_link
from daemon.i18n import negotiate
from daemon.metrics import LATENCY_BOUNDS, Metrics
from daemon.web import (
    account, clients, company, invitations, new_account, password_reset, security, transfers, workspace,
)
from daemon.config import LOCALES
from daemon.web.context import (
    BROWSER_IDS,
    CABINET,
    FORM,
    LANGUAGE_COOKIE,
    PAGES,
    SESSIONS,
    SITE,
    VISITOR,
    Site,
    CsrfToken,
    Visitor,
    check_csrf,
    run,
    load_visitor,
    message,
    page,
)
from daemon.web.browser_ids import BrowserIds
from daemon.web.pages import Pages

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", Metrics)
Readiness = Callable[[], dict[str, bool]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PLAIN_PATHS = ("/healthz", "/readyz", "/favicon.ico")

LINK_PURPOSES = {"invitations": "invite", "company": "manage", "transfers": "transfer", "setup": "setup", "payment": "payment"}


class _Measured(dict[tuple[Any, str], tuple[list[float], list[float] | None]]):
    """The metrics' series per (route, method), found once per route: a request adds to them
    (``daemon.metrics.RequestCounts``)."""


MEASURED = web.AppKey("measured", _Measured)


@web.middleware
async def through(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's way through Cabinet, in one middleware: each ``@web.middleware`` layer costs a
    coroutine and a partial per request, and a link page is most of what this server does.

    In order, outermost first (as the five middlewares it replaces ran): latency and link counts
    (``_measure``); domain errors and faults as pages (``_error_page``); other sites' POSTs refused
    before their body is read (``security.cross_site_refusal``); the visitor, the POST's form and its
    CSRF check (``_visitor_for``); the handler; an emailed link's first opening noted
    (``_note_opening``); and the browser cookie a page with a form needs."""
    started = time.perf_counter()
    site = request.app[SITE]  # once per request: a property of a property, then the app's mapping
    try:
        try:
            method = request.method
            if method not in ("GET", "HEAD"):  # only a request that may change state can be refused
                refused = security.cross_site_refusal(request)
                if refused is not None:
                    return refused
            path = request.path
            if path.startswith("/static/") or path in PLAIN_PATHS:
                return await handler(request)
            v = request[VISITOR] = await load_visitor(request, site)
            if method == "POST":
                submitted = await request.post()
                request[FORM] = submitted
                csrf = submitted.get("csrf_token")
                check_csrf(request, csrf if isinstance(csrf, str) else None)
            elif method not in ("GET", "HEAD"):
                raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD", "POST"])
            response = await handler(request)
            # A page whose own read found the opening already recorded (None) leaves nothing to note.
            if method == "GET" and response.status == 200 and (v.first_opening is not None or not v.opening_checked):
                await _note_opening(request, v)
            # Only a page with a form needs the browser cookie; sign-in sets its own (rotated) one.
            cookie = v.csrf_token.cookie  # minted with the token a page's form showed
            if cookie is not None and site.security.browser_cookie not in response.cookies:
                site.security.set_browser_cookie(response, cookie)
            return response
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            # aiohttp's own "404: Not Found" is plain text: show the site's page, in the visitor's language.
            if VISITOR not in request:
                raise
            response = page(request, "not_found.html", status=exc.status, method_not_allowed=exc.status == 405)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except web.HTTPException:
            raise
        except Exception as exc:
            return _error_page(request, exc)
    finally:
        _measure(request, site, started)


def _measure(request: web.Request, site: Site, started: float) -> None:
    """Latency per route, and link opens (GET) versus actions (POST) per purpose."""
    route = request.match_info.route
    method = request.method
    series = site.measured.get((route, method))
    if series is None:
        series = _series(request, route, method)
    latency, clicks = series
    elapsed = time.perf_counter() - started
    latency[bisect_left(LATENCY_BOUNDS, elapsed)] += 1
    latency[-1] += elapsed
    if clicks is not None:
        clicks[0] += 1


def _series(request: web.Request, route: Any, method: str) -> tuple[list[float], list[float] | None]:
    """The latency and click series of this request's route, method and link purpose; kept per (route,
    method) when the route decides the purpose (its first path segment is fixed) and the method is one
    Cabinet answers (any other method string is a client's: kept nowhere new)."""
    resource = route.resource
    canonical = resource.canonical if resource is not None else "unmatched"
    path = request.path
    purpose = LINK_PURPOSES.get(path.split("/")[1] if path.count("/") >= 2 else "")
    counts = request.app[METRICS].counts
    clicks = None
    if purpose and method in ("GET", "POST"):
        clicks = counts.clicks(purpose, "opened" if method == "GET" else "acted")
    series = (counts.latency(canonical, method), clicks)
    if resource is not None and method in ("GET", "HEAD", "POST") and "{" not in canonical.split("/")[1]:
        request.app[MEASURED][(route, method)] = series
    return series


async def _note_opening(request: web.Request, v: Visitor) -> None:
    """After an emailed link's page was shown (GET, 200), note that it was opened: an append-only
    telemetry row that changes nothing the link does (see daemon.link_opens for why this is not a
    state change). A failure to note it is logged; the visitor still gets the page."""
    checked = v.opening_checked  # the page's own read looked for an earlier opening
    if checked or is_emailed_link(request.path):
        opens = request.app[CABINET].link_opens
        try:
            # Another emailed link's page: its opening is read in a thread (an ORM read, any database).
            opening = v.first_opening if checked else await run(opens.opening_of, request.path)
            if opening is not None:  # none yet: written with the other first openings in flight
                await opens.note(opening)
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a page
            log.warning("could not record a link opening: %s", storage_fault(exc) or type(exc).__name__)


def anonymous_visitor(request: web.Request) -> Visitor:
    """A visitor known without the database, for the error page when the database is down."""
    cabinet = request.app[CABINET]
    chosen = request.cookies.get(LANGUAGE_COOKIE, "")
    locale = chosen if chosen in LOCALES else negotiate(
        request.headers.get("Accept-Language"), cabinet.config.general.default_locale
    )
    return Visitor(
        known_browser=None, session_token=None, user=None, locale=locale,
        timezone=cabinet.config.general.timezone,
        csrf_token=CsrfToken(cabinet.signer, None, request.app[BROWSER_IDS]), site=request.app[SITE],
    )


def _error_page(request: web.Request, exc: Exception) -> web.Response:
    """A domain error's page in the visitor's language; a fault's "try again" page (503, one line in the
    log) or a bug's (500, the traceback logged): never the exception's text."""
    if isinstance(exc, CabinetError):
        if VISITOR not in request:
            return web.Response(text=str(exc), status=exc.http_status)
        return page(request, "error.html", status=exc.http_status, message=message(request, exc))
    fault = storage_fault(exc)
    if fault is not None:  # temporary, not a bug: one line in the log, "try again" on the page
        log.error("%s %s: %s", request.method, request.path, fault)
    else:
        log.exception("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    status = 503 if fault is not None else 500
    if request.path in PLAIN_PATHS or request.path.startswith("/static/"):
        return web.Response(text="temporarily unavailable\n" if fault else "internal error\n", status=status)
    if VISITOR not in request:
        # The fault came before the visitor was known (loading the session needs the database).
        request[VISITOR] = anonymous_visitor(request)
    return page(request, "error.html", status=status, message=None)


async def favicon(request: web.Request) -> web.FileResponse:
    """Browsers ask for /favicon.ico on every page whatever the HTML says."""
    found = request.app[CABINET].templates.find("web/static/favicon.ico")
    if found is None:
        raise web.HTTPNotFound()
    return web.FileResponse(found)


async def healthz(request: web.Request) -> web.Response:
    """The process answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: the listeners are up, the database takes a write, the outbox is moving."""
    problems = [name for name, ok in request.app[READINESS]().items() if not ok]
    cabinet = request.app[CABINET]
    problems += await run(Health(cabinet.sessions, cabinet.clock).problems)
    if problems:
        return web.Response(text="not ready: " + ", ".join(problems) + "\n", status=503)
    return web.Response(text="ready\n")


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS].registry
    body = await run(generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def static(request: web.Request) -> web.StreamResponse:
    """A file from ``web/static``: the operator's override folder first, then the built-in one."""
    found = request.app[CABINET].templates.find("web/static/" + request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    return web.FileResponse(found)


def make_metrics_app(metrics_registry: Metrics) -> web.Application:
    """``/metrics`` alone, for its own listener (``[metrics] listen``), never the public one."""
    app = web.Application()
    app[METRICS] = metrics_registry
    app.router.add_get("/metrics", metrics)
    return app


def make_app(
    cabinet: Cabinet,
    sessions: WebSessions,
    pages: Pages,
    metrics_registry: Metrics,
    readiness: Callable[[], dict[str, bool]],
) -> web.Application:
    app = web.Application(
        middlewares=[through], client_max_size=64 * 1024
    )
    security.install(app, cabinet.config.http, pages, cabinet.config.general.default_locale,
                     cabinet.config.general.timezone, cabinet.config.general.product_name)
    app[CABINET] = cabinet
    app[SESSIONS] = sessions
    app[PAGES] = pages
    app[METRICS] = metrics_registry
    app[MEASURED] = measured = _Measured()
    app[BROWSER_IDS] = BrowserIds()
    app[READINESS] = readiness
    app[SITE] = Site.of(app, measured)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/{name:.+}", static)
    account.setup(app)
    invitations.setup(app)
    company.setup(app)
    transfers.setup(app)
    clients.setup(app)
    workspace.setup(app)
    password_reset.setup(app)
    new_account.setup(app)
    return app
