"""`cabinet company …`"""

from __future__ import annotations

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table


@click.group("company")
def company() -> None:
    """Client companies (their QuickBooks books) and their primary admins."""


@company.command("add")
@click.argument("name")
@click.option("--admin-email", required=True, help="The primary admin's address.")
@click.option("--admin-name", help="The primary admin's name.")
@click.option("--kind", type=click.Choice(["business", "individual"]), default="business", show_default=True)
@click.option("--locale", type=click.Choice(["en", "fr"]), help="The primary admin's language.")
@click.option("--timezone", help="The primary admin's time zone, e.g. America/Toronto.")
@click.option("--quickbooks-time", is_flag=True, help="QuickBooks Time is attached to the subscription.")
@pass_state
def add(
    state: CliState,
    name: str,
    admin_email: str,
    admin_name: str | None,
    kind: str,
    locale: str | None,
    timezone: str | None,
    quickbooks_time: bool,
) -> None:
    """Add a client company.

    Example: cabinet company add "Boulangerie Roy" --admin-email julie@boulangerie-roy.ca --locale fr
    """
    created = state.cabinet.roster.add_company(
        name, admin_email, admin_name, kind=kind, locale=locale, quickbooks_time=quickbooks_time, timezone=timezone
    )
    click.echo(f"Added company {created.name} (primary admin {created.admin_email}).")


@company.command("send-link")
@click.argument("name")
@pass_state
def send_link(state: CliState, name: str) -> None:
    """Email the company's primary admin a "manage my company" link.

    The page it opens lets them invite an accountant, allow a billing transfer,
    add payment details and see the connected firms. The link lasts 24 hours.
    """
    url = state.cabinet.company_admin.send_link(name)
    click.echo(f"Sent. Link: {url}")


@company.command("set-admin")
@click.argument("name")
@click.option("--admin-email", required=True, help="The new primary admin's address.")
@click.option("--admin-name", help="The new primary admin's name.")
@pass_state
def set_admin(state: CliState, name: str, admin_email: str, admin_name: str | None) -> None:
    """Change the company's primary admin (links sent to the previous one stop working)."""
    address = state.cabinet.company_admin.set_primary_admin(name, admin_email, admin_name)
    click.echo(f"{address} is now the primary admin of {name}.")


@company.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List client companies."""
    items = state.cabinet.roster.list_companies()
    if as_json:
        print_json(items)
    else:
        print_table([[c.name, c.kind, c.admin_email, c.subscription] for c in items], ["COMPANY", "KIND", "PRIMARY ADMIN", "SUBSCRIPTION"])


def register(cli: click.Group) -> None:
    cli.add_command(company)
