"""The HTTP adapter: link landing pages, sign-in, and health.

GET and HEAD only show; every POST carries a CSRF token checked by the
middleware before any handler runs. Domain errors become pages here and
nowhere else.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiohttp import web

from daemon.app import Cabinet
from daemon.auth import WebSessions
from daemon.errors import CabinetError
from daemon.metrics import Metrics
from daemon.tokens import Purpose
from daemon.web import account, clients, company, invitations, new_account, password_reset, security, transfers
from daemon.web.context import (
    CABINET,
    FORM,
    PAGES,
    SESSIONS,
    VISITOR,
    check_csrf,
    run,
    load_visitor,
    message,
    page,
)
from daemon.web.pages import Pages

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", Metrics)
Readiness = Callable[[], dict[str, bool]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LINK_PURPOSES = {"invitations": "invite", "company": "manage", "transfers": "transfer", "setup": "setup", "payment": "payment"}


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency per route, and link opens (GET) versus actions (POST) per purpose."""
    metrics = request.app[METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        metrics.requests.labels(route, request.method).observe(time.perf_counter() - started)
        purpose = LINK_PURPOSES.get(request.path.split("/")[1] if request.path.count("/") >= 2 else "")
        if purpose and request.method in ("GET", "POST"):
            metrics.links.labels(purpose, "opened" if request.method == "GET" else "acted").inc()


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
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
    except CabinetError as exc:
        if VISITOR not in request:
            return web.Response(text=str(exc), status=exc.http_status)
        return page(request, "error.html", status=exc.http_status, message=message(request, exc))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        if VISITOR not in request:
            return web.Response(text="internal error", status=500)
        return page(request, "error.html", status=500, message=None)


@web.middleware
async def visitors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/static/") or request.path in ("/healthz", "/readyz", "/favicon.ico"):
        return await handler(request)
    v = await load_visitor(request)
    request[VISITOR] = v
    if request.method == "POST":
        submitted = await request.post()
        request[FORM] = submitted
        csrf = submitted.get("csrf_token")
        check_csrf(request, csrf if isinstance(csrf, str) else None)
    elif request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
    response = await handler(request)
    cookies = request.app[security.SECURITY]
    # Only a page with a form needs the browser cookie; sign-in sets its own (rotated) one.
    if v.new_browser and v.csrf_token.used and cookies.browser_cookie not in response.cookies:
        cookies.set_cookie(response, cookies.browser_cookie, request.app[CABINET].signer.sign(Purpose.BROWSER, v.browser_id))
    return response


async def favicon(request: web.Request) -> web.FileResponse:
    """Browsers ask for /favicon.ico on every page whatever the HTML says."""
    return web.FileResponse(request.app[CABINET].templates_dir / "web" / "static" / "favicon.ico")


async def healthz(request: web.Request) -> web.Response:
    """The process answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: the database answers and the listeners are up."""
    problems = [name for name, ok in request.app[READINESS]().items() if not ok]
    try:
        await run(request.app[CABINET].ping_database)
    except Exception as exc:
        problems.append(f"database: {type(exc).__name__}")
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
        middlewares=[measure, errors, security.same_origin_posts, visitors], client_max_size=64 * 1024
    )
    security.install(app, cabinet.config.http, pages, cabinet.config.general.default_locale, cabinet.config.general.timezone)
    app[CABINET] = cabinet
    app[SESSIONS] = sessions
    app[PAGES] = pages
    app[METRICS] = metrics_registry
    app[READINESS] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/{name:.+}", static)
    account.setup(app)
    invitations.setup(app)
    company.setup(app)
    transfers.setup(app)
    clients.setup(app)
    password_reset.setup(app)
    new_account.setup(app)
    return app
