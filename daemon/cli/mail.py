"""`cabinet mail …`: read the local Maildir and send what is queued."""

from __future__ import annotations

import asyncio

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table
from daemon.errors import ConfigError
from mailer.maildir import list_mail, read_mail, read_raw, text_body


@click.group("mail")
def mail() -> None:
    """Outbound mail: the local Maildir and the outbox."""


def _maildir(state: CliState) -> None:
    if state.config.mail.transport != "maildir":
        raise ConfigError("mail goes to an SMTP relay ([mail] transport = \"smtp\"); there is no local Maildir to read")


@mail.command("list")
@click.option("--to", help="Only messages to this address.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, to: str | None, as_json: bool) -> None:
    """List the emails Cabinet wrote to the local Maildir, oldest first."""
    _maildir(state)
    items = list_mail(state.config.mail.maildir, to)
    if as_json:
        print_json(items)
    else:
        print_table([[m.id, m.date[:16], m.to, m.subject] for m in items], ["ID", "DATE", "TO", "SUBJECT"])


@mail.command("show")
@click.argument("message_id")
@click.option("--raw", is_flag=True, help="Print the whole message with headers and HTML.")
@pass_state
def show(state: CliState, message_id: str, raw: bool) -> None:
    """Show one email from the Maildir (its text part, with the links in it).

    Example: cabinet mail show "$(cabinet mail list --json | jq -r '.[-1].id')"
    """
    _maildir(state)
    if raw:
        click.echo(read_raw(state.config.mail.maildir, message_id).decode("utf-8", "replace"))
        return
    message = read_mail(state.config.mail.maildir, message_id)
    for header in ("From", "To", "Date", "Subject", "Reply-To"):
        if message.get(header):
            click.echo(f"{header}: {message[header]}")
    click.echo()
    click.echo(text_body(message))


@mail.command("flush")
@pass_state
def flush(state: CliState) -> None:
    """Send every queued email that is due now, then exit (for use without `cabinet serve`)."""
    sent = asyncio.run(state.cabinet.worker.send_due())
    click.echo(f"Sent {sent} email(s).")


def register(cli: click.Group) -> None:
    cli.add_command(mail)
