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
@click.option("--timezone", help="Time zone for dates, e.g. America/Toronto.")
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
    password = _read_password(password_stdin)
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
        print_table(
            [[u.email, u.name, ", ".join(f.name for f in u.firms), "disabled" if u.disabled_at else "active"]
             for u in users],
            ["EMAIL", "NAME", "FIRMS", "ACCOUNT"],
        )


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@staff.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_state
def set_password(state: CliState, email: str, password_stdin: bool) -> None:
    """Set a staff member's password; every signed-in session of theirs ends.

    Example: echo 'a long passphrase' | cabinet staff set-password marie@tremblay-cpa.ca --password-stdin
    """
    user = state.cabinet.roster.set_password(email, _read_password(password_stdin))
    click.echo(f"Password set for {user.email}; their sessions have ended.")


@staff.command("edit")
@click.argument("email")
@click.option("--name", help="Full name, shown to clients.")
@click.option("--locale", type=click.Choice(["en", "fr"]), help="Language for pages and emails.")
@click.option("--timezone", help="Time zone for dates, e.g. America/Toronto.")
@pass_state
def edit(state: CliState, email: str, name: str | None, locale: str | None, timezone: str | None) -> None:
    """Change a staff member's name, language or time zone."""
    user = state.cabinet.roster.edit_staff(email, name=name, locale=locale, timezone=timezone)
    click.echo(f"{user.name} <{user.email}>: language {user.locale}, time zone {user.timezone}.")


@staff.command("add-firm")
@click.argument("email")
@click.argument("firm")
@pass_state
def add_firm(state: CliState, email: str, firm: str) -> None:
    """Make an existing staff member a member of another firm too."""
    user = state.cabinet.roster.add_staff_to_firm(email, firm)
    click.echo(f"{user.email} is now a member of {', '.join(f.name for f in user.firms)}.")


@staff.command("remove-firm")
@click.argument("email")
@click.argument("firm")
@pass_state
def remove_firm(state: CliState, email: str, firm: str) -> None:
    """Remove a staff member from one firm (never their last one: disable the account instead)."""
    user = state.cabinet.roster.remove_staff_from_firm(email, firm)
    click.echo(f"{user.email} is now a member of {', '.join(f.name for f in user.firms)}.")


@staff.command("disable")
@click.argument("email")
@pass_state
def disable(state: CliState, email: str) -> None:
    """Disable an account: it can no longer sign in and its sessions end now. Its history stays."""
    user = state.cabinet.roster.disable_staff(email)
    click.echo(f"{user.email} is disabled; their sessions have ended.")


def register(cli: click.Group) -> None:
    cli.add_command(staff)
