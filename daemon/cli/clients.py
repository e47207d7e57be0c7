"""`cabinet client …`"""

from __future__ import annotations

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table


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
    items = state.cabinet.roster.list_clients(firm)
    if as_json:
        print_json(items)
    else:
        print_table(
            [[c.name, c.kind, c.billing, c.status, f"{c.connected_at:%Y-%m-%d}" if c.connected_at else ""] for c in items],
            ["CLIENT", "KIND", "BILLING", "STATUS", "CONNECTED"],
        )


def register(cli: click.Group) -> None:
    cli.add_command(client)
