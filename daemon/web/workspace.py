"""Signed-in staff's workspace: the client list, a client's page, what is pending, the team, the profile."""

from __future__ import annotations

from typing import Any, Callable, TypeVar
from urllib.parse import quote

from aiohttp import web

from daemon.config import LOCALES
from daemon.errors import CabinetError, InvalidInput, NotFound
from daemon.views import UserView
from daemon.web.context import CABINET, SESSIONS, form, message, page, redirect, run, visitor
from daemon.web.zones import ZoneChoices, ZoneMenu
from daemon.workspace import BILLINGS, STATUSES, NavCounts, RosterQuery

T = TypeVar("T")

# The profile page's zone choice in each language, made once per language (``daemon.web.zones``).
ZONE_CHOICES = web.AppKey("zone_choices", ZoneChoices)


def _signed_in(request: web.Request) -> UserView:
    v = visitor(request)
    if v.user is None:
        back = quote(request.path_qs, safe="/")
        raise web.HTTPSeeOther(f"/sign-in?next={back}" if request.method == "GET" else "/sign-in")
    return v.user


async def _page(
    request: web.Request, template: str, status: int = 200, nav: NavCounts | None = None, **context: Any
) -> web.Response:
    """A workspace page, with the navigation's counts (``nav``: already read with the page's own read)."""
    if nav is None:
        nav = await run(request.app[CABINET].workspace.counts, _signed_in(request))
    return page(request, template, status=status, nav=nav, **context)


async def _read(request: web.Request, read: Callable[..., T], *args: Any) -> tuple[T, NavCounts]:
    """The page's read (``read(user, *args)``) and the navigation's counts: one trip off the event
    loop, one session."""
    return await run(request.app[CABINET].workspace.page, _signed_in(request), read, *args)


async def clients(request: web.Request) -> web.Response:
    user = _signed_in(request)
    query = RosterQuery.parse(request.query)
    if query.firm_id is not None and query.firm_id not in {f.id for f in user.firms}:
        query = RosterQuery(query.text, query.status, query.billing, None, query.sort, query.page)
    roster, nav = await _read(request, request.app[CABINET].workspace.clients, query)
    return await _page(request, "clients.html", nav=nav, roster=roster, statuses=STATUSES, billings=BILLINGS)


CLIENT_DONE = ("contact", "setup", "payment", "withdraw")


async def _client_page(
    request: web.Request, status: int = 200, error: str | None = None, values: dict[str, str] | None = None
) -> web.Response:
    detail, nav = await _read(request, request.app[CABINET].workspace.client, int(request.match_info["id"]))
    if detail is None:
        raise web.HTTPNotFound()  # another firm's client or none: the same answer
    done = request.query.get("done", "") if error is None else ""
    contact = values or {"email": detail.email or "", "phone": detail.phone or ""}
    return await _page(request, "client.html", status=status, nav=nav, client=detail, error=error,
                       done=done if done in CLIENT_DONE else "", contact=contact)


async def client(request: web.Request) -> web.Response:
    return await _client_page(request)


async def client_action(request: web.Request) -> web.Response:
    """The client page's buttons: edit the contact, resend the setup or payment link, withdraw an
    invitation — each through ClientActions, as `cabinet client edit`/`resend-link` and
    `cabinet invitation revoke` do; then back to the page, which says what was done."""
    user = _signed_in(request)
    cabinet = request.app[CABINET]
    client_id = int(request.match_info["id"])
    action = request.match_info["action"]
    data = form(request)
    values = None
    try:
        if action == "contact":
            values = {key: str(data.get(key, "")) for key in ("email", "phone")}
            await run(cabinet.client_actions.edit_contact, client_id, values["email"], values["phone"],
                      user.email, "link", user.id)
            done = "contact"
        elif action == "resend":
            done = await run(cabinet.client_actions.resend_link, client_id, str(data.get("link", "")), user.email,
                             "link", user.id)
        elif action == "withdraw":
            invitation = str(data.get("invitation_id", ""))
            if not invitation.isdigit():
                raise InvalidInput("invitation.choose")
            await run(cabinet.client_actions.withdraw_invitation, client_id, int(invitation), user.email, "link",
                      user.id)
            done = "withdraw"
        else:
            raise web.HTTPNotFound()
    except NotFound as exc:
        if exc.code == "client.missing":
            raise web.HTTPNotFound() from None  # another firm's client: as the page itself answers
        return await _client_page(request, status=exc.http_status, error=message(request, exc), values=values)
    except CabinetError as exc:
        return await _client_page(request, status=exc.http_status, error=message(request, exc), values=values)
    cabinet.worker.wake()
    return redirect(f"/clients/{client_id}?done={done}")


async def pending(request: web.Request) -> web.Response:
    found, nav = await _read(request, request.app[CABINET].workspace.pending)
    return await _page(request, "pending.html", nav=nav, pending=found)


async def team(request: web.Request) -> web.Response:
    members, nav = await _read(request, request.app[CABINET].workspace.team)
    return await _page(request, "team.html", nav=nav, members=members)


async def _zones(request: web.Request) -> ZoneMenu:
    """The zone choice in the page's language; made, the first time, in a thread (tz files read, a few
    hundred babel lookups: not on the event loop)."""
    choices = request.app[ZONE_CHOICES]
    locale = visitor(request).locale
    made = choices.made(locale)
    return made if made is not None else await run(choices.menu, locale)


def _profile_values(user: UserView) -> dict[str, str]:
    return {"name": user.name, "locale": user.locale, "timezone": user.timezone}


async def profile(request: web.Request) -> web.Response:
    user = _signed_in(request)
    done = request.query.get("done", "")
    return await _page(request, "profile.html", values=_profile_values(user), zones=await _zones(request),
                       locales=LOCALES, error=None, error_form=None,
                       done=done if done in ("profile", "password") else "")


async def update_profile(request: web.Request) -> web.Response:
    user = _signed_in(request)
    data = form(request)
    values = {key: str(data.get(key, "")).strip() for key in ("name", "locale", "timezone")}
    try:
        await run(request.app[CABINET].roster.update_profile, user.id, values["name"], values["locale"],
                  values["timezone"])
    except CabinetError as exc:
        return await _page(request, "profile.html", status=exc.http_status, values=values,
                           zones=await _zones(request), locales=LOCALES, error=message(request, exc),
                           error_form="profile", done="")
    return redirect("/profile?done=profile")


async def change_password(request: web.Request) -> web.Response:
    user = _signed_in(request)
    cabinet = request.app[CABINET]
    data = form(request)
    current = str(data.get("current_password", ""))
    new = str(data.get("new_password", ""))
    try:
        if new != str(data.get("confirm_password", "")):
            raise InvalidInput("password.mismatch")
        stored = await run(cabinet.roster.password_hash, user.id)
        # argon2 on the password pool, as sign-in does: never on the event loop.
        if not await cabinet.passwords.verify_async(stored, current):
            raise InvalidInput("password.current_wrong")
        new_hash = await cabinet.passwords.executor.run(cabinet.passwords.hash, new)
        await run(cabinet.roster.change_password, user.id, str(stored), new_hash)
        await run(request.app[SESSIONS].end_others, user.id, visitor(request).session_token)
    except CabinetError as exc:
        return await _page(request, "profile.html", status=exc.http_status, values=_profile_values(user),
                           zones=await _zones(request), locales=LOCALES, error=message(request, exc),
                           error_form="password", done="")
    return redirect("/profile?done=password")


def setup(app: web.Application) -> None:
    app[ZONE_CHOICES] = ZoneChoices()
    app.router.add_get("/clients", clients)
    app.router.add_get("/clients/{id:[0-9]{1,18}}", client)
    app.router.add_post("/clients/{id:[0-9]{1,18}}/{action}", client_action)
    app.router.add_get("/pending", pending)
    app.router.add_get("/team", team)
    app.router.add_get("/profile", profile)
    app.router.add_post("/profile", update_profile)
    app.router.add_post("/profile/password", change_password)
