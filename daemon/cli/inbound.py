"""`cabinet inbound …`: what the SMTP/LMTP listener received and what became of it."""

from __future__ import annotations

import time

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table

STATES = ("received", "processed", "duplicate", "quarantined")
# How long `inbound retry` waits for a running `cabinet serve` that took the message before it could.
RUNNING_SERVER_WAIT = 60.0


@click.group("inbound")
def inbound() -> None:
    """Inbound mail: replies, bounces and auto-replies."""


@inbound.command("list")
@click.option("--status", type=click.Choice(STATES), help="Only messages in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, status: str | None, as_json: bool) -> None:
    """List received messages, oldest first."""
    items = state.cabinet.inbound.list(status)
    if as_json:
        print_json(items)
    else:
        print_table(
            [[str(m.id), f"{m.received_at:%Y-%m-%d %H:%M}", m.mail_from or "<>", m.state, m.kind or "",
              (m.outcome or m.last_error or "")[:60]] for m in items],
            ["ID", "RECEIVED (UTC)", "FROM", "STATE", "KIND", "OUTCOME"],
        )


@inbound.command("show")
@click.argument("inbound_id", type=int)
@click.option("--raw", is_flag=True, help="Print the message exactly as received.")
@pass_state
def show(state: CliState, inbound_id: int, raw: bool) -> None:
    """Show one received message: what was decided, and the message."""
    view, content = state.cabinet.inbound.show(inbound_id)
    if not raw:
        for key, value in view.as_dict().items():
            click.echo(f"{key}: {value}")
        click.echo()
    click.echo(content.decode("utf-8", "replace"))


@inbound.command("retry")
@click.argument("inbound_id", type=int)
@pass_state
def retry(state: CliState, inbound_id: int) -> None:
    """Process a quarantined message again (after fixing what made it fail)."""
    view = state.cabinet.inbound.retry(inbound_id)
    processed = state.cabinet.inbound.process(view.id)
    after = state.cabinet.inbound.show(view.id)[0]
    if not processed and after.state == "received" and after.last_error is None:
        # Not ours to report yet: a running `cabinet serve` took the message first (the retry put it
        # back in its line). Its result is the one to show, once it has one.
        deadline = time.monotonic() + RUNNING_SERVER_WAIT
        while after.state == "received" and after.last_error is None and time.monotonic() < deadline:
            time.sleep(0.2)
            after = state.cabinet.inbound.show(view.id)[0]
    if after.state != "received":
        click.echo(f"Inbound message {after.id} is {after.state}" + (f": {after.outcome}" if after.outcome else ""))
    elif after.last_error is not None:
        click.echo(f"Inbound message {after.id} is {after.state} (attempt failed: {after.last_error})")
    else:
        click.echo(f"Inbound message {after.id} is {after.state}: waiting for the running `cabinet serve`")


def register(cli: click.Group) -> None:
    cli.add_command(inbound)
