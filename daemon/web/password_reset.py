"""Forgotten password pages: ask for a link, then choose a new password with it.

Asking answers the same page whether or not the address has an account. The
new password is hashed on the password pool, never on the event loop.
"""

from __future__ import annotations

from aiohttp import web

from daemon.errors import InvalidInput
from daemon.web.context import CABINET, form, message, page, run, speak_to


async def forgot_form(request: web.Request) -> web.Response:
    return page(request, "password_forgot.html", sent=False, email="")


async def forgot(request: web.Request) -> web.Response:
    email = str(form(request).get("email", ""))[:320]
    await run(request.app[CABINET].password_resets.request, email)
    # The same page for every address, known or not.
    return page(request, "password_forgot.html", sent=True, email="")


async def reset_form(request: web.Request) -> web.Response:
    user = await run(request.app[CABINET].password_resets.open, request.match_info["token"])
    speak_to(request, user.locale, user.timezone)
    return page(request, "password_reset.html", account=user.email, error=None, done=False)


async def reset(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    token = request.match_info["token"]
    user = await run(cabinet.password_resets.open, token)
    speak_to(request, user.locale, user.timezone)
    data = form(request)
    password = str(data.get("password", ""))
    try:
        if password != str(data.get("confirm", "")):
            raise InvalidInput("password.not_same")
        password_hash = await cabinet.passwords.executor.run(cabinet.passwords.hash, password)
    except InvalidInput as exc:
        return page(request, "password_reset.html", status=400, account=user.email, error=message(request, exc),
                    done=False)
    await run(cabinet.password_resets.reset, token, password_hash)
    return page(request, "password_reset.html", account=user.email, error=None, done=True)


def setup(app: web.Application) -> None:
    app.router.add_get("/password-reset", forgot_form)
    app.router.add_post("/password-reset", forgot)
    app.router.add_get("/password-reset/{token}", reset_form)
    app.router.add_post("/password-reset/{token}", reset)
