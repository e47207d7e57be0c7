"""Sign-in, sign-out and the signed-in home page."""

from __future__ import annotations

from aiohttp import web

from daemon.config import LOCALES
from daemon.web.context import (
    CABINET,
    LANGUAGE_COOKIE,
    SESSION_COOKIE,
    SESSIONS,
    form,
    page,
    redirect,
    run,
    safe_next,
    visitor,
)


async def home(request: web.Request) -> web.Response:
    v = visitor(request)
    if v.user is None:
        return page(request, "sign_in.html", next="/", email="", failed=False)
    cabinet = request.app[CABINET]
    rosters = {firm.name: await run(cabinet.roster.list_clients, firm.name) for firm in v.user.firms}
    return page(request, "home.html", rosters=rosters)


async def sign_in_form(request: web.Request) -> web.Response:
    return page(request, "sign_in.html", next=safe_next(request.query.get("next")), email="", failed=False)


async def sign_in(request: web.Request) -> web.StreamResponse:
    data = form(request)
    email = str(data.get("email", ""))
    password = str(data.get("password", ""))
    target = safe_next(str(data.get("next", "/")))
    cabinet = request.app[CABINET]
    # argon2 verification is deliberately slow: run it off the event loop.
    user = await run(cabinet.roster.authenticate, email, password)
    if user is None:
        return page(request, "sign_in.html", status=401, next=target, email=email, failed=True)
    token = await run(request.app[SESSIONS].start, user.id)
    response = redirect(target)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        secure=cabinet.config.http.public_url.startswith("https://"),
        path="/",
        max_age=cabinet.config.security.session_hours * 3600,
    )
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await run(request.app[SESSIONS].end, visitor(request).session_token)
    response = redirect(safe_next(str(form(request).get("next", "/"))))
    response.del_cookie(SESSION_COOKIE, path="/")
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
