"""`cabinet firm …`"""

from __future__ import annotations

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table


@click.group("firm")
def firm() -> None:
    """Accounting firms."""


@firm.command("add")
@click.argument("name")
@click.option("--email", required=True, help="The firm's contact address.")
@pass_state
def add(state: CliState, name: str, email: str) -> None:
    """Add a firm.

    Example: cabinet firm add "Tremblay CPA" --email bureau@tremblay-cpa.ca
    """
    created = state.cabinet.roster.add_firm(name, email)
    click.echo(f"Added firm {created.name} <{created.email}>.")


@firm.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List firms."""
    firms = state.cabinet.roster.list_firms()
    if as_json:
        print_json(firms)
    else:
        print_table([[f.name, f.email] for f in firms], ["FIRM", "EMAIL"])


def register(cli: click.Group) -> None:
    cli.add_command(firm)
