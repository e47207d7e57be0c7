"""The firm's Complete transfer link: GET shows the permission, POST (signed-in member) acts."""

from __future__ import annotations

from aiohttp import web

from daemon.errors import LinkTampered, NotAllowed
from daemon.transfers import TransferRefused, TransferUnavailable, TransferView
from daemon.web.context import CABINET, message, page, redirect, run, visitor


def _page(request: web.Request, transfer: TransferView, status: int = 200, error: str | None = None) -> web.Response:
    v = visitor(request)
    member = v.user is not None and any(f.id == transfer.firm_id for f in v.user.firms)
    return page(
        request, "transfer.html", status=status, transfer=transfer, member=member, error=error,
        next=request.path, email="", failed=False,
        # "?confirm=complete|decline": the confirmation step before an action that cannot be undone.
        confirm=request.query.get("confirm", "") if request.method == "GET" else "",
    )


async def show(request: web.Request) -> web.Response:
    try:
        transfer = await run(request.app[CABINET].transfers.open, request.match_info["token"])
    except LinkTampered:
        return page(request, "link_invalid.html", status=404)
    return _page(request, transfer)


async def act(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    token = request.match_info["token"]
    v = visitor(request)
    link = f"/transfers/{token}"
    if v.user is None:
        return redirect(link)
    action = cabinet.transfers.complete if request.match_info["action"] == "complete" else cabinet.transfers.decline
    try:
        await run(action, token, v.user.id)
    except LinkTampered:
        return page(request, "link_invalid.html", status=404)
    except TransferUnavailable as exc:
        return _page(request, exc.view, status=409)
    except (TransferRefused, NotAllowed) as exc:
        return _page(request, await run(cabinet.transfers.open, token), status=403, error=message(request, exc))
    cabinet.worker.wake()
    return redirect(link)


def setup(app: web.Application) -> None:
    app.router.add_get("/transfers/{token}", show)
    app.router.add_post("/transfers/{token}/{action:complete|decline}", act)
