"""Firm staff's Add client page (flows 3 and 4), and the new client's setup and payment links."""

from __future__ import annotations

from aiohttp import web

from daemon.errors import CabinetError, LinkTampered
from daemon.onboarding import NewClient
from daemon.web.context import CABINET, form, page, redirect, run, visitor


FIELDS = ("firm_id", "kind", "name", "email", "phone", "billing")
EMPTY_FORM = {**{key: "" for key in FIELDS}, "products": [], "primary_admin": False}


async def new_client_form(request: web.Request) -> web.Response:
    v = visitor(request)
    if v.user is None:
        return redirect("/sign-in?next=/clients/new")
    products = await run(request.app[CABINET].onboarding.products)
    return page(request, "client_add.html", products=products, values=EMPTY_FORM, error=None)


async def add_client(request: web.Request) -> web.Response:
    v = visitor(request)
    if v.user is None:
        return redirect("/sign-in?next=/clients/new")
    cabinet = request.app[CABINET]
    data = form(request)
    values = {key: str(data.get(key, "")) for key in FIELDS}
    chosen = [str(p) for p in data.getall("product", [])]
    make_me_admin = data.get("primary_admin") == "me"
    try:
        # With one firm the form has no firm field; the domain checks membership either way.
        firm_id = int(values["firm_id"]) if values["firm_id"].isdigit() else v.user.firms[0].id if v.user.firms else 0
        new = NewClient(
            kind=values["kind"], name=values["name"], billing=values["billing"], email=values["email"] or None,
            phone=values["phone"] or None, products=tuple(chosen) if values["billing"] != "none" else (),
        )
        added = await run(
            cabinet.onboarding.add_client, firm_id, new, v.user.id if make_me_admin else None, v.user.email, "link",
            v.user.id,
        )
    except CabinetError as exc:
        products = await run(cabinet.onboarding.products)
        return page(request, "client_add.html", status=exc.http_status, products=products,
                    values={**values, "products": chosen, "primary_admin": make_me_admin}, error=str(exc))
    cabinet.worker.wake()
    return page(request, "client_added.html", client=added)


async def show_setup(request: web.Request) -> web.Response:
    try:
        setup = await run(request.app[CABINET].onboarding.open_setup, request.match_info["token"])
    except LinkTampered:
        return page(request, "link_invalid.html", status=404)
    return page(request, "setup.html", setup=setup, error=None)


async def accept_setup(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    token = request.match_info["token"]
    try:
        await run(cabinet.onboarding.accept_setup, token, str(form(request).get("name", "")))
    except LinkTampered:
        return page(request, "link_invalid.html", status=404)
    except CabinetError as exc:
        return page(request, "setup.html", status=exc.http_status, setup=await run(cabinet.onboarding.open_setup, token), error=str(exc))
    cabinet.worker.wake()
    return redirect(f"/setup/{token}")


async def show_payment(request: web.Request) -> web.Response:
    try:
        payment = await run(request.app[CABINET].onboarding.open_payment, request.match_info["token"])
    except LinkTampered:
        return page(request, "link_invalid.html", status=404)
    return page(request, "payment.html", payment=payment, error=None)


async def record_payment(request: web.Request) -> web.Response:
    cabinet = request.app[CABINET]
    token = request.match_info["token"]
    try:
        await run(cabinet.onboarding.record_payment_details, token, str(form(request).get("name_on_card", "")))
    except LinkTampered:
        return page(request, "link_invalid.html", status=404)
    except CabinetError as exc:
        payment = await run(cabinet.onboarding.open_payment, token)
        return page(request, "payment.html", status=exc.http_status, payment=payment, error=str(exc))
    cabinet.worker.wake()
    return redirect(f"/payment/{token}")


def setup(app: web.Application) -> None:
    app.router.add_get("/clients/new", new_client_form)
    app.router.add_post("/clients/new", add_client)
    app.router.add_get("/setup/{token}", show_setup)
    app.router.add_post("/setup/{token}", accept_setup)
    app.router.add_get("/payment/{token}", show_payment)
    app.router.add_post("/payment/{token}", record_payment)
