"""`cabinet staff …`"""

from __future__ import annotations

import sys

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table


@click.group("staff")
def staff() -> None:
    """Firm staff (accountants) who sign in to accept invitations."""


@staff.command("add")
@click.argument("email")
@click.option("--name", required=True, help="Full name, shown to clients.")
@click.option("--firm", "firms", multiple=True, required=True, help="Firm name; repeat for several firms.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--locale", type=click.Choice(["en", "fr"]), help="Language for pages and emails.")
@click.option("--timezone", help="Time zone for dates, e.g. America/Montreal.")
@pass_state
def add(
    state: CliState,
    email: str,
    name: str,
    firms: tuple[str, ...],
    password_stdin: bool,
    locale: str | None,
    timezone: str | None,
) -> None:
    """Add a staff member to one or more firms.

    Example: echo 'a long passphrase' | cabinet staff add marie@tremblay-cpa.ca
    --name "Marie Tremblay" --firm "Tremblay CPA" --password-stdin
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = state.cabinet.roster.add_staff(email, name, list(firms), password, locale=locale, timezone=timezone)
    click.echo(f"Added {user.name} <{user.email}> to {', '.join(f.name for f in user.firms)}.")


@staff.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List staff members and their firms."""
    users = state.cabinet.roster.list_staff()
    if as_json:
        print_json(users)
    else:
        print_table([[u.email, u.name, ", ".join(f.name for f in u.firms)] for u in users], ["EMAIL", "NAME", "FIRMS"])


def register(cli: click.Group) -> None:
    cli.add_command(staff)
