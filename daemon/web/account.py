"""Sign-in, sign-out and the signed-in home page."""

from __future__ import annotations

import secrets

from aiohttp import web

from daemon.config import LOCALES
from daemon.errors import AuthenticationFailed, Busy, LimitReached
from daemon.tokens import Purpose
from daemon.web.context import (
    CABINET,
    LANGUAGE_COOKIE,
    SESSIONS,
    form,
    page,
    redirect,
    run,
    visitor,
)
from daemon.web import workspace
from daemon.web.security import SECURITY, client_ip, safe_next


async def home(request: web.Request) -> web.Response:
    v = visitor(request)
    if v.user is None:
        return page(request, "sign_in.html", next="/", email="", failed=False)
    # Signed-in staff land on their client list.
    return await workspace.clients(request)


async def sign_in_form(request: web.Request) -> web.Response:
    return page(request, "sign_in.html", next=safe_next(request.query.get("next")), email="", failed=False)


async def sign_in(request: web.Request) -> web.StreamResponse:
    data = form(request)
    email = str(data.get("email", ""))[:320]
    password = str(data.get("password", ""))  # bounded by client_max_size
    target = safe_next(str(data.get("next", "/")))
    cabinet = request.app[CABINET]
    security = request.app[SECURITY]
    try:
        user = await cabinet.sign_in.attempt(email, password, client_ip(request))
    except AuthenticationFailed:
        # One answer whether or not the address has an account.
        return page(request, "sign_in.html", status=401, next=target, email=email, failed=True)
    except (LimitReached, Busy) as exc:
        response = page(request, "error.html", status=exc.http_status, message=str(exc))
        retry_after = exc.retry_after if isinstance(exc, LimitReached) else 5
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response
    token = await run(request.app[SESSIONS].start, user.id)
    response = redirect(target)
    security.set_cookie(
        response, security.session_cookie, token, max_age=cabinet.config.security.session_hours * 3600
    )
    # A new browser id at sign-in: a CSRF token obtained before (or planted) stops working.
    security.set_cookie(response, security.browser_cookie, cabinet.signer.sign(Purpose.BROWSER, secrets.token_urlsafe(32)))
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await run(request.app[SESSIONS].end, visitor(request).session_token)
    response = redirect(safe_next(str(form(request).get("next", "/"))))
    security = request.app[SECURITY]
    security.delete_cookie(response, security.session_cookie)
    return response


async def choose_language(request: web.Request) -> web.StreamResponse:
    """The language switch on every page: remembered in a cookie for a year, for anyone, signed in or not."""
    data = form(request)
    chosen = str(data.get("language", ""))
    response = redirect(safe_next(str(data.get("next", "/"))))
    if chosen in LOCALES:
        response.set_cookie(
            LANGUAGE_COOKIE,
            chosen,
            httponly=True,
            samesite="Lax",
            secure=request.app[CABINET].config.http.public_url.startswith("https://"),
            path="/",
            max_age=365 * 24 * 3600,
        )
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/sign-in", sign_in_form)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    app.router.add_post("/language", choose_language)
