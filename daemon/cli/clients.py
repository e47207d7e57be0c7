"""`cabinet client …`"""

from __future__ import annotations

from json.encoder import encode_basestring  # json's own C string encoder (ensure_ascii=False)
from typing import TYPE_CHECKING, Callable

import click

from daemon.cli.state import CliState, pass_state, print_json_chunks, print_table

if TYPE_CHECKING:
    from daemon.client_list import Entry


@click.group("client")
def client() -> None:
    """A firm's client roster."""


@client.command("list")
@click.option("--firm", required=True, help="The firm whose roster to show.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, firm: str, as_json: bool) -> None:
    """List a firm's clients.

    Example: cabinet client list --firm "Tremblay CPA" --json
    """
    if as_json:
        # Straight from the database (daemon.client_list), not through the whole Cabinet: at 100k
        # clients start-up and per-row objects were most of the time.
        from daemon.client_list import read_roster

        with state.engine.connect() as connection:
            roster = read_roster(connection, firm, chunk=2000)
            print_json_chunks(map(client_json(roster.firm), roster.batches))
    else:
        items = state.cabinet.roster.list_clients(firm)
        print_table(
            [[c.name, c.kind, c.billing, c.status, f"{c.connected_at:%Y-%m-%d}" if c.connected_at else ""] for c in items],
            ["CLIENT", "KIND", "BILLING", "STATUS", "CONNECTED"],
        )


def client_json(firm: str) -> Callable[[list[Entry]], list[str]]:
    """A batch of ``firm``'s roster entries (rows and products, from ``daemon.client_list``), each
    as ``print_json`` prints it: ``pretty_json(ClientView(...).as_dict())`` byte for byte
    (tests/test_print_json.py holds them equal), laid out in one expression.

    The shape is fixed, so each string is one call to json's C encoder and nothing else is
    encoded: ids are integers, dates digits and punctuation. One comprehension per batch, no
    call per entry or per date (those were a fifth of a 100k roster's time)."""
    firm_text = encode_basestring(firm)
    q = encode_basestring
    Q, Z = '"', '+00:00"'  # a date: '"' + daemon.client_list.iso(text) + '"', written out

    def entries(batch: list[Entry]) -> list[str]:
        return [
            f'  {{\n    "id": {client_id},\n    "firm": {firm_text},\n    "name": {q(name)},\n    "kind": {q(kind)},'
            f'\n    "status": {q(status)},\n    "billing": {q(billing)},'
            f'\n    "company": {"null" if company is None else q(company)},'
            f'\n    "email": {"null" if email is None else q(email)},'
            f'\n    "phone": {"null" if phone is None else q(phone)},'
            '\n    "connected_at": '
            + ("null" if connected_at is None else Q + connected_at.replace(" ", "T").replace(".000000", "") + Z)
            + ',\n    "products": '
            + ("[\n      " + ",\n      ".join(map(q, products)) + "\n    ]" if products else "[]")
            + ',\n    "trial_ends_at": '
            + ("null" if trial_ends_at is None else Q + trial_ends_at.replace(" ", "T").replace(".000000", "") + Z)
            + f',\n    "primary_admin": {"null" if primary_admin is None else q(primary_admin)}\n  }}'
            for (client_id, name, kind, status, billing, company, email, phone, connected_at, trial_ends_at,
                 primary_admin), products in batch
        ]

    return entries


@client.command("add")
@click.option("--firm", help="The firm adding the client (required when there are several).")
@click.option("--kind", type=click.Choice(["business", "individual"]), required=True)
@click.option("--name", required=True, help="Business or person's name, as on the roster.")
@click.option("--email", help="The client's contact address.")
@click.option("--phone", help="The client's phone number.")
@click.option("--billing", type=click.Choice(["wholesale", "direct", "none"]), required=True,
              help="wholesale: billed to the firm; direct: direct discount, billed to the client; none: no QuickBooks.")
@click.option("--product", "products", multiple=True, help="Product id (see `cabinet product list`); repeat.")
@click.option("--primary-admin", "primary_admin", help="Staff email to make primary admin (\"Make me the primary admin\").")
@click.option("--locale", type=click.Choice(["en", "fr"]), help="The client's language for emails.")
@pass_state
def add(
    state: CliState, firm: str | None, kind: str, name: str, email: str | None, phone: str | None, billing: str,
    products: tuple[str, ...], primary_admin: str | None, locale: str | None,
) -> None:
    """Add a client to a firm's roster (the Add client page does the same).

    \b
    Examples:
      cabinet client add --firm "Tremblay CPA" --kind business --name "Garage Lévesque" \\
          --email marc@garage.example --billing wholesale --product qbo-plus --product payroll-core
      cabinet client add --firm "Tremblay CPA" --kind individual --name "Anne Roy" --billing none
    """
    from daemon.onboarding import NewClient

    roster = state.cabinet.roster
    firm_id = roster.find_firm(firm).id if firm else None
    admin_id = roster.find_staff(primary_admin).id if primary_admin else None
    new = NewClient(kind=kind, name=name, billing=billing, email=email, phone=phone, products=products, locale=locale)
    added = state.cabinet.onboarding.add_client(firm_id, new, admin_id, actor="operator", channel="cli")
    click.echo(f"Added {added.name} to {added.firm}'s roster (billing {added.billing}, status {added.status}).")


@client.command("edit")
@click.option("--firm", required=True, help="The client's firm.")
@click.option("--name", required=True, help="The client's name, as on the roster.")
@click.option("--email", help="The new contact address (\"\" removes it).")
@click.option("--phone", help="The new phone number (\"\" removes it).")
@pass_state
def edit(state: CliState, firm: str, name: str, email: str | None, phone: str | None) -> None:
    """Change a client's contact details (the client's page does the same).

    While the client has not yet become primary admin, a new address also gets
    the setup invitation: resend it with `cabinet client resend-link`.

    Example: cabinet client edit --firm "Tremblay CPA" --name "Garage Lévesque" --email marc@garage.example
    """
    actions = state.cabinet.client_actions
    edited = actions.edit_contact(actions.find(firm, name), email, phone, "operator", "cli")
    click.echo(f"{edited.name}: email {edited.email or '-'}, phone {edited.phone or '-'}.")


@client.command("resend-link")
@click.option("--firm", required=True, help="The client's firm.")
@click.option("--name", required=True, help="The client's name, as on the roster.")
@click.option("--link", "which", type=click.Choice(["setup", "payment"]), default="setup", show_default=True,
              help="setup: the link to become primary admin; payment: a direct-discount trial's payment link.")
@pass_state
def resend_link(state: CliState, firm: str, name: str, which: str) -> None:
    """Email a client its setup link again (a new one; the previous stops working) or, on a
    direct-discount trial without payment details, its payment link (--link payment).

    Example: cabinet client resend-link --firm "Tremblay CPA" --name "Garage Lévesque"
    """
    actions = state.cabinet.client_actions
    sent = actions.resend_link(actions.find(firm, name), which, "operator", "cli")
    click.echo(f"{'Setup' if sent == 'setup' else 'Payment'} link emailed again to {name}.")


def register(cli: click.Group) -> None:
    cli.add_command(client)
