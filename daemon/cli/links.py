"""`cabinet link …`: what an emailed link is, for support."""

from __future__ import annotations

import json

import click

from daemon.cli.state import CliState, pass_state


@click.group("link")
def link() -> None:
    """Emailed links (invitations, manage, transfer, setup, payment, password reset)."""


@link.command("explain")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@pass_state
def explain(state: CliState, url: str, as_json: bool) -> None:
    """Say what a link is, whom it was issued to, when, until when, and what became of it.

    Reads only: nothing is opened, accepted or sent. A link Cabinet did not sign
    (forged, truncated, for another site) is refused with exit code 1.

    Example: cabinet link explain 'https://cabinet.example/invitations/eyJ…'
    """
    found = state.cabinet.link_explainer.explain(url)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2, ensure_ascii=False))
        return
    used = found.used
    rows = [
        ("Purpose", f"{found.purpose} (#{found.row_id})"),
        ("Issued to", found.issued_to),
        ("Issued at", found.issued_at.isoformat()),
        ("Expires", found.expires_at.isoformat() + ("  (expired)" if found.link_expired else "")),
        ("Current", "yes" if found.current else "no: replaced by a newer link, or the address changed"),
        ("State", found.state),
        ("Used", f"{used.at.isoformat()} by {used.actor} ({used.kind}, {used.channel})" if used else "no"),
        *((key.replace("_", " ").capitalize(), str(value)) for key, value in found.detail.items() if value is not None),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label + ':':<{width + 1}} {value}")
    if found.events:
        click.echo("Events:")
        for event in found.events:
            click.echo(f"  {event.at.isoformat()}  {event.kind}  {event.actor} ({event.channel})")


def register(cli: click.Group) -> None:
    cli.add_command(link)
