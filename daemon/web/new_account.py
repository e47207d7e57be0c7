"""Creating an account from an invitation: ask for the emailed link, then fill in the account.

The password is hashed on the password pool, never on the event loop. Once the
account exists the visitor is signed in and sent on to the invitation.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from aiohttp import web

from daemon.config import LOCALES
from daemon.errors import CabinetError, InvalidInput
from daemon.tokens import Purpose
from daemon.web.context import CABINET, SESSIONS, form, message, page, redirect, run, visitor
from daemon.web.security import SECURITY


async def offer(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    await run(cabinet.new_accounts.offer, request.match_info["token"])
    cabinet.worker.wake()
    return page(request, "account_new.html", sent=True, invitation=None, error=None, values={})


async def show(request: web.Request) -> web.Response:
    invitation = await run(request.app[CABINET].new_accounts.open, request.match_info["token"])
    values = {"locale": visitor(request).locale}
    return page(request, "account_new.html", sent=False, invitation=invitation, error=None, values=values,
                locales=LOCALES)


async def create(request: web.Request) -> web.StreamResponse:
    cabinet = request.app[CABINET]
    token = request.match_info["token"]
    invitation = await run(cabinet.new_accounts.open, token)
    data = form(request)
    values = {key: str(data.get(key, ""))[:200] for key in ("name", "firm", "locale")}
    password = str(data.get("password", ""))
    try:
        if password != str(data.get("confirm", "")):
            raise InvalidInput("password.not_same")
        password_hash = await cabinet.passwords.executor.run(cabinet.passwords.hash, password)
        user, invitation = await run(
            cabinet.new_accounts.create, token, values["name"], values["locale"], values["firm"], password_hash
        )
    except CabinetError as exc:
        if exc.http_status not in (400, 409):
            raise
        return page(request, "account_new.html", status=exc.http_status, sent=False, invitation=invitation,
                    error=message(request, exc), values=values, locales=LOCALES)
    # Signed in as the new account, with a new browser id (as a sign-in does), on to the invitation.
    security = request.app[SECURITY]
    session = await run(request.app[SESSIONS].start, user.id)
    response = redirect(urlsplit(invitation.invitation_url).path)
    security.set_cookie(response, security.session_cookie, session,
                        max_age=cabinet.config.security.session_hours * 3600)
    security.set_cookie(response, security.browser_cookie,
                        cabinet.signer.sign(Purpose.BROWSER, secrets.token_urlsafe(32)))
    return response


def setup(app: web.Application) -> None:
    app.router.add_post("/invitations/{token}/account", offer)
    app.router.add_get("/accounts/new/{token}", show)
    app.router.add_post("/accounts/new/{token}", create)
