"""`cabinet inbound …`: what the SMTP/LMTP listener received and what became of it."""

from __future__ import annotations

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table

STATES = ("received", "processed", "duplicate", "quarantined")


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
    click.echo(f"Inbound message {after.id} is {after.state}" + (f": {after.outcome}" if processed else
               f" (attempt failed: {after.last_error})"))


def register(cli: click.Group) -> None:
    cli.add_command(inbound)
