"""`cabinet mail …`: what the outbox holds and did (whatever the transport), and sending it."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import click

from daemon.cli.state import CliState, counted, pass_state, print_json, print_table
from daemon.errors import ConfigError, InvalidInput
from mailer.maildir import list_mail, read_mail, read_raw, text_body
from mailer.queue import STATES, OutboxEntry, parse


@click.group("mail")
def mail() -> None:
    """Outbound mail: the outbox (queued, sent, failed, bounced) and the local Maildir."""


def _maildir(state: CliState) -> None:
    if state.config.mail.transport != "maildir":
        raise ConfigError("mail goes to an SMTP relay ([mail] transport = \"smtp\"); there is no local Maildir "
                          "to read (leave out --maildir to read the outbox)")


def _when(entry: OutboxEntry) -> str:
    moment = entry.sent_at or entry.next_attempt_at or entry.created_at
    return moment.isoformat()[:16]


@mail.command("list")
@click.option("--to", help="Only emails to this address (or part of it).")
@click.option("--state", "only", type=click.Choice(list(STATES)), help="Only emails in this state.")
@click.option("--maildir", "maildir", is_flag=True, help="List the files in the local Maildir instead.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, to: str | None, only: str | None, maildir: bool, as_json: bool) -> None:
    """List the outbox, oldest first: state, attempts, when (sent, or next attempt) and the relay's last answer.

    Example: cabinet mail list --state failed
    """
    if maildir:
        _maildir(state)
        files = list_mail(state.config.mail.maildir, to)
        if as_json:
            print_json(files)
        else:
            print_table([[m.id, m.date[:16], m.to, m.subject] for m in files], ["ID", "DATE", "TO", "SUBJECT"])
        return
    items = state.cabinet.mail_queue.listing(to, only)
    if as_json:
        print_json(items)
        return
    print_table(
        [[str(m.id), m.state, str(m.attempts), _when(m), m.to, m.subject[:40], (m.last_answer or "")[:60]]
         for m in items],
        ["ID", "STATE", "TRIES", "WHEN", "TO", "SUBJECT", "LAST ANSWER"],
    )


@mail.command("show")
@click.argument("message_id")
@click.option("--raw", is_flag=True, help="Print the whole message with headers and HTML.")
@click.option("--maildir", is_flag=True, help="MESSAGE_ID is a file in the local Maildir (`mail list --maildir`).")
@pass_state
def show(state: CliState, message_id: str, raw: bool, maildir: bool) -> None:
    """Show one email: its outbox state and the relay's answer, then its text part (with the links in it).

    MESSAGE_ID is the id from `cabinet mail list` or the email's Message-ID.

    Example: cabinet mail show "$(cabinet mail list --json | jq -r '.[-1].id')"
    """
    if maildir:
        _maildir(state)
        if raw:
            click.echo(read_raw(state.config.mail.maildir, message_id).decode("utf-8", "replace"))
            return
        _print_message(read_mail(state.config.mail.maildir, message_id))
        return
    entry, data = state.cabinet.mail_queue.find(message_id)
    if raw:
        click.echo(data.decode("utf-8", "replace"))
        return
    click.echo(f"Email {entry.id} ({entry.kind}): {entry.state}, {counted(entry.attempts, 'attempt')}")
    click.echo(f"Message-ID: {entry.message_id}")
    click.echo(f"Queued: {entry.created_at.isoformat()}")
    if entry.next_attempt_at:
        click.echo(f"Next attempt: {entry.next_attempt_at.isoformat()}")
    if entry.sent_at:
        click.echo(f"Sent: {entry.sent_at.isoformat()}")
    if entry.last_answer:
        click.echo(f"Last answer: {entry.last_answer}")
    if entry.bounce_reason and entry.bounce_reason != entry.last_answer:
        click.echo(f"Bounce: {entry.bounce_reason}")
    click.echo()
    _print_message(parse(data))


def _print_message(message: EmailMessage) -> None:
    for header in ("From", "To", "Date", "Subject", "Reply-To"):
        if message.get(header):
            click.echo(f"{header}: {message[header]}")
    click.echo()
    click.echo(text_body(message))


@mail.command("flush")
@pass_state
def flush(state: CliState) -> None:
    """Send every queued email that is due now, then exit (for use without `cabinet serve`)."""
    sent = asyncio.run(state.cabinet.worker.flush())
    click.echo(f"Sent {counted(sent, 'email')}.")


@mail.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--failed", "every_failed", is_flag=True, help="Every failed email.")
@pass_state
def retry(state: CliState, ids: tuple[int, ...], every_failed: bool) -> None:
    """Queue failed emails again, or try queued ones now, with a fresh retry budget (e.g. after a relay outage).

    Sent and bounced emails are refused: one went out, the other was refused for good.

    Example: cabinet mail retry --failed   or   cabinet mail retry 12 13
    """
    if bool(ids) == every_failed:
        raise InvalidInput("give the ids of failed emails (see `cabinet mail list --state failed`) or --failed")
    done = state.cabinet.mail_queue.requeue(list(ids) if ids else None)
    click.echo(f"Queued {counted(len(done), 'email')} again" + (f": {', '.join(map(str, done))}." if done else "."))


def register(cli: click.Group) -> None:
    cli.add_command(mail)
