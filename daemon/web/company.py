"""The primary admin's "manage my company" page: invite an accountant, allow or revoke a
billing transfer, find the payment-details link. The signed link is the admin's credential."""

from __future__ import annotations

from aiohttp import web

from daemon.domain import request_key
from daemon.errors import CabinetError, InvalidInput, LimitReached, LinkError
from daemon.web.context import CABINET, form, message, page, redirect, run, speak_to
from daemon.web.security import client_ip


async def _page(request: web.Request, status: int = 200, error: str | None = None, notice: str | None = None) -> web.Response:
    cabinet = request.app[CABINET]
    company_id, email = await run(cabinet.company_admin.resolve, request.match_info["token"])
    company = await run(cabinet.company_admin.view, company_id)
    speak_to(request, company.locale, company.timezone)
    return page(
        request,
        "company.html",
        status=status,
        company=company,
        options=await run(cabinet.transfers.options, company_id, email),
        pending=await run(cabinet.transfers.pending_for_company, company_id),
        payment_link=await run(cabinet.company_admin.payment_link, company_id),
        error=error,
        notice=notice,
    )


def _ask_again(request: web.Request, exc: LinkError) -> web.Response:
    """A manage link that has expired (it lasts 24 hours) or is not valid: what happened, and the way to
    `/manage`, which emails the primary admin a fresh one, rather than an error page with no next step."""
    return page(request, "company_link_refused.html", status=exc.http_status, error=message(request, exc))


async def show(request: web.Request) -> web.Response:
    try:
        return await _page(request, notice=request.query.get("done"))
    except LinkError as exc:
        return _ask_again(request, exc)


async def act(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    token = request.match_info["token"]
    try:
        company_id, email = await run(cabinet.company_admin.resolve, token)
    except LinkError as exc:
        return _ask_again(request, exc)
    action = request.match_info["action"]
    data = form(request)
    try:
        if action == "invite":
            email = str(data.get("email", ""))
            # A second press of the same form (same link, same address) within the window sends nothing more.
            key = request_key("invite", token, email.strip().lower())
            await run(cabinet.company_admin.invite, company_id, email, key)
        elif action == "transfer":
            firm = str(data.get("firm_id", ""))
            if not firm.isdigit():
                raise InvalidInput("firm.choose_for_transfer")
            await run(cabinet.transfers.allow_for, company_id, int(firm), email, "link")
        elif action == "withdraw":
            invitation = str(data.get("invitation_id", ""))
            if not invitation.isdigit():
                raise InvalidInput("invitation.choose")
            await run(cabinet.roster.revoke_invitation, int(invitation), "link", company_id=company_id, actor=email)
        elif action == "revoke-transfer":
            await run(cabinet.transfers.revoke, company_id, email, "link")
        else:
            raise web.HTTPNotFound()
    except CabinetError as exc:
        return await _page(request, status=exc.http_status, error=message(request, exc))
    cabinet.worker.wake()
    return redirect(f"/company/{token}?done={action}")


async def ask_form(request: web.Request) -> web.Response:
    """"Manage my company", linked from the start page: a client admin asks for a manage link."""
    return page(request, "company_ask.html", sent=request.query.get("sent") == "1", error=None)


async def ask(request: web.Request) -> web.Response:
    email = str(form(request).get("email", ""))[:320]
    try:
        await run(request.app[CABINET].company_admin.request_link, email, client_ip(request))
    except LimitReached as exc:
        response = page(request, "company_ask.html", status=exc.http_status, sent=False, error=message(request, exc))
        response.headers["Retry-After"] = str(exc.retry_after or 60)
        return response
    request.app[CABINET].worker.wake()
    # The same answer for every address, a primary admin's or not.
    return redirect("/manage?sent=1")


def setup(app: web.Application) -> None:
    app.router.add_get("/manage", ask_form)
    app.router.add_post("/manage", ask)
    app.router.add_get("/company/{token}", show)
    app.router.add_post("/company/{token}/{action}", act)
