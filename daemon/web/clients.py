"""Firm staff's Add client page (flows 3 and 4), and the new client's setup and payment links."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from daemon.errors import CabinetError, InvalidInput, LinkTampered
from daemon.onboarding import NewClient
from daemon.web.context import CABINET, form, message, page, redirect, run, speak_to, visitor


Handler = Callable[[web.Request], Awaitable[web.Response]]

FIELDS = ("firm_id", "kind", "name", "email", "phone", "billing", "locale")
EMPTY_FORM = {**{key: "" for key in FIELDS}, "products": [], "primary_admin": False}

# Which form field an error is about, so the page shows it there (aria-invalid, aria-describedby).
FIELD_OF_ERROR = {
    "firm.choose_for_client": "firm",
    "firm.missing": "firm",
    "firm.not_member_add_client": "firm",
    "kind.unknown": "kind",
    "name.empty": "name",
    "name.too_long": "name",
    "client.exists": "name",
    "company.exists_invite_admin": "name",
    "email.invalid": "email",
    "client.email_or_admin": "email",
    "billing.unknown": "billing",
    "product.unknown": "quickbooks",
    "products.one_quickbooks": "quickbooks",
    "products.none_for_no_subscription": "quickbooks",
    "products.one_payroll": "payroll",
    "payroll.requires_wholesale": "payroll",
}


def _field_of(error: CabinetError, firm_field: bool) -> str | None:
    """The field to show ``error`` beside; None (top of the form) when the form has no such field."""
    field = FIELD_OF_ERROR.get(error.code)
    return None if field == "firm" and not firm_field else field


async def new_client_form(request: web.Request) -> web.Response:
    v = visitor(request)
    if v.user is None:
        return redirect("/sign-in?next=/clients/new")
    products = await run(request.app[CABINET].onboarding.products)
    # The client's language starts as the firm's: the language its staff member works in.
    values = {**EMPTY_FORM, "locale": v.user.locale}
    return page(request, "client_add.html", products=products, values=values, error=None, error_field=None)


async def add_client(request: web.Request) -> web.Response:
    v = visitor(request)
    if v.user is None:
        return redirect("/sign-in?next=/clients/new")
    cabinet = request.app[CABINET]
    data = form(request)
    values = {key: str(data.get(key, "")) for key in FIELDS}
    # One QuickBooks product and at most one Payroll product (radios); "product" is the CLI-like list form.
    picked = [str(data.get("quickbooks_product", "")), str(data.get("payroll_product", ""))]
    chosen = [str(p) for p in data.getall("product", [])] + [p for p in picked if p]
    make_me_admin = data.get("primary_admin") == "me"
    try:
        # With one firm the form has no firm field: the domain takes the only firm, and refuses to
        # guess among several (as the CLI and a reply do). Products go through as chosen: the domain
        # refuses products for a client with no subscription rather than this page dropping them.
        raw_firm = values["firm_id"].strip()
        if raw_firm and not raw_firm.isdigit():
            raise InvalidInput("firm.choose")
        new = NewClient(
            kind=values["kind"], name=values["name"], billing=values["billing"], email=values["email"] or None,
            phone=values["phone"] or None, products=tuple(chosen),
            locale=values["locale"] or v.user.locale,
        )
        added = await run(
            cabinet.onboarding.add_client, int(raw_firm) if raw_firm else None, new,
            v.user.id if make_me_admin else None, v.user.email, "link", v.user.id,
        )
    except CabinetError as exc:
        products = await run(cabinet.onboarding.products)
        return page(request, "client_add.html", status=exc.http_status, products=products,
                    values={**values, "products": chosen, "primary_admin": make_me_admin},
                    error=message(request, exc), error_field=_field_of(exc, len(v.user.firms) > 1))
    cabinet.worker.wake()
    return page(request, "client_added.html", client=added)


def _single_form_link(
    path: str, template: str, name: str, opener: str, action: str, field: str
) -> tuple[Handler, Handler]:
    """GET shows the state behind a signed link; POST submits its one-field form, then shows it again.

    ``opener`` and ``action`` name the Onboarding methods that read and act.
    """

    async def show(request: web.Request) -> web.Response:
        onboarding = request.app[CABINET].onboarding
        try:
            state = await run(getattr(onboarding, opener), request.match_info["token"])
        except LinkTampered:
            return page(request, "link_invalid.html", status=404)
        speak_to(request, state.locale, state.timezone)
        return page(request, template, error=None, **{name: state})

    async def act(request: web.Request) -> web.Response:
        cabinet = request.app[CABINET]
        token = request.match_info["token"]
        try:
            await run(getattr(cabinet.onboarding, action), token, str(form(request).get(field, "")))
        except LinkTampered:
            return page(request, "link_invalid.html", status=404)
        except CabinetError as exc:
            state = await run(getattr(cabinet.onboarding, opener), token)
            speak_to(request, state.locale, state.timezone)
            return page(request, template, status=exc.http_status, error=message(request, exc), **{name: state})
        cabinet.worker.wake()
        return redirect(f"{path}/{token}")

    return show, act


show_setup, accept_setup = _single_form_link("/setup", "setup.html", "setup", "open_setup", "accept_setup", "name")
show_payment, record_payment = _single_form_link(
    "/payment", "payment.html", "payment", "open_payment", "record_payment_details", "name_on_card"
)


def setup(app: web.Application) -> None:
    app.router.add_get("/clients/new", new_client_form)
    app.router.add_post("/clients/new", add_client)
    app.router.add_get("/setup/{token}", show_setup)
    app.router.add_post("/setup/{token}", accept_setup)
    app.router.add_get("/payment/{token}", show_payment)
    app.router.add_post("/payment/{token}", record_payment)
