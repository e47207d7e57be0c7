"""Invitation links: the accountant's accept page and the client admin's renewal page.

Opening a link (GET/HEAD) only reads. Accept, decline and "ask for a new
invitation" are POSTs that call the roster domain, then redirect back to the
link, which now shows the invitation's new state.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from daemon.errors import InvalidInput, LinkTampered
from daemon.roster import INVITATION_PAGE_SHOWN, INVITATION_PAGE_ZONE, InvitationUnavailable, WrongAccount
from daemon.views import InvitationView
from daemon.web.context import (
    CABINET, VISITOR, SharedContext, form, message, page, read, redirect, run, shared_page, visitor,
)


def _token(request: web.Request) -> str:
    return request.match_info["token"]


def _invitation_page(
    request: web.Request, invitation: InvitationView, status: int = 200, error: str | None = None,
    has_account: bool = True, now: datetime | None = None,
) -> web.Response:
    v = visitor(request)
    wrong_account = v.user is not None and v.user.email != invitation.email
    return page(
        request,
        "invitation.html",
        status=status,
        now=now or request.app[CABINET].clock.now(),
        invitation=invitation,
        wrong_account=wrong_account,
        error=error,
        has_account=has_account,
        failed=False,
        email=invitation.email,
        next=request.path,
        confirm=_confirm(request),
    )


def _confirm(request: web.Request) -> str:
    """"?confirm=decline": the confirmation step before an action that cannot be undone (GET only shows).
    Only that value means anything to the page: any other is "" (and not a key of its own).
    (The query is parsed only when there is one: a link as emailed has none.)"""
    return "decline" if request.method == "GET" and request.query_string \
        and request.query.get("confirm") == "decline" else ""


def _invalid_link(request: web.Request) -> web.Response:
    return page(request, "link_invalid.html", status=404)


async def show(request: web.Request) -> web.Response:
    v = request[VISITOR]
    site = v.site
    assert site is not None  # every request's visitor has its app's (``daemon.web.through``)
    roster = site.cabinet.roster
    now = site.clock.now()  # one instant for the page: its status, its dates and "in 47 hours"
    try:
        link = await read(request, site, roster.invitation_link_row, _token(request), site.known_openings)
    except LinkTampered:
        return _invalid_link(request)
    v.found_opening(link.opening)
    if v.user is not None:
        return _invitation_page(request, roster.invitation_link_view(link, now), now=now)
    # Signed out: dates in the invited accountant's recorded zone, as in the invitation email (the language
    # stays the browser's, or the switch's, until they sign in); no zone: no account there yet.
    zone = link.row[INVITATION_PAGE_ZONE]
    if zone:
        v.timezone = zone
    path = request.path
    confirm = _confirm(request)

    def rendered() -> SharedContext:
        invitation = roster.invitation_link_view(link, now)
        start, end = roster.invitation_status_holds(invitation)
        return {
            "invitation": invitation, "wrong_account": False, "error": None, "has_account": zone is not None,
            "failed": False, "email": invitation.email, "next": path, "confirm": confirm,
        }, start, end

    # The page is what the link's row shows (its state, names and dates as the database has them now:
    # a change shows on the next request), kept by the row as the driver gave it (no view made to find it),
    # but for whether the link's opening is recorded, which the page does not show.
    shown = link.row[:INVITATION_PAGE_SHOWN]
    return shared_page(v, site, "invitation.html", path, (confirm, shown), now, rendered)


async def _act(request: web.Request, action: str) -> web.Response:
    cabinet = request.app[CABINET]
    v = visitor(request)
    token = _token(request)
    link = request.path.rsplit("/", 1)[0]
    try:
        if action == "request-new":
            renewal = await run(cabinet.roster.request_new_invitation, token)
            cabinet.worker.wake()
            return page(request, "invitation_renewal_requested.html", invitation=renewal.invitation,
                        already=renewal.already_requested)
        if v.user is None:
            return redirect(link)
        if action == "accept":
            raw_firm = str(form(request).get("firm_id", "")).strip()
            if raw_firm and not raw_firm.isdigit():
                raise InvalidInput("firm.choose")
            await cabinet.accepts.accept(token, v.user.id, int(raw_firm) if raw_firm else None, "link")
        else:
            await run(cabinet.roster.decline_invitation, token, v.user.id)
        cabinet.worker.wake()
        return redirect(link)
    except LinkTampered:
        return _invalid_link(request)
    except InvitationUnavailable as exc:
        return _invitation_page(request, exc.view, status=409)
    except WrongAccount:
        invitation = await run(cabinet.roster.open_invitation, token)
        return _invitation_page(request, invitation, status=403)
    except InvalidInput as exc:
        invitation = await run(cabinet.roster.open_invitation, token)
        return _invitation_page(request, invitation, status=400, error=message(request, exc))


async def accept(request: web.Request) -> web.Response:
    return await _act(request, "accept")


async def decline(request: web.Request) -> web.Response:
    return await _act(request, "decline")


async def request_new(request: web.Request) -> web.Response:
    return await _act(request, "request-new")


async def show_renewal(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    try:
        invitation = await run(cabinet.roster.open_renewal, _token(request))
    except LinkTampered:
        return _invalid_link(request)
    return page(request, "invitation_renew.html", invitation=invitation, sent=None)


async def renew(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    try:
        sent = await run(cabinet.roster.renew_invitation, _token(request), "link")
    except LinkTampered:
        return _invalid_link(request)
    except InvitationUnavailable as exc:
        return page(request, "invitation_renew.html", status=409, invitation=exc.view, sent=None)
    cabinet.worker.wake()
    return page(request, "invitation_renew.html", invitation=sent, sent=sent)


def setup(app: web.Application) -> None:
    app.router.add_get("/invitations/renew/{token}", show_renewal)
    app.router.add_post("/invitations/renew/{token}", renew)
    app.router.add_get("/invitations/{token}", show)
    app.router.add_post("/invitations/{token}/accept", accept)
    app.router.add_post("/invitations/{token}/decline", decline)
    app.router.add_post("/invitations/{token}/request-new", request_new)
