"""`cabinet invitation …`"""

from __future__ import annotations

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table


@click.group("invitation")
def invitation() -> None:
    """Invitations from a client company to an accountant."""


@invitation.command("send")
@click.option("--company", required=True, help="The inviting company's name.")
@click.option("--email", required=True, help="The address the accountant uses for their firm.")
@pass_state
def send(state: CliState, company: str, email: str) -> None:
    """Invite an accountant, as the company's admin would.

    A pending invitation to the same address is superseded: its link stops working.

    Example: cabinet invitation send --company "Boulangerie Roy" --email marie@tremblay-cpa.ca
    """
    sent = state.cabinet.roster.send_invitation(company, email)
    click.echo(f"Invitation {sent.id} sent to {sent.email}, valid until {sent.expires_at:%Y-%m-%d %H:%M} UTC.")
    click.echo(f"Link: {sent.url}")


@invitation.command("revoke")
@click.argument("invitation_id", type=int)
@pass_state
def revoke(state: CliState, invitation_id: int) -> None:
    """Revoke a pending invitation (its link then says so).

    Example: cabinet invitation revoke 3
    """
    revoked = state.cabinet.roster.revoke_invitation(invitation_id)
    click.echo(f"Invitation {revoked.id} to {revoked.email} for {revoked.company} is revoked.")


@invitation.command("list")
@click.option("--company", help="Only this company's invitations.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, company: str | None, as_json: bool) -> None:
    """List invitations and their status."""
    items = state.cabinet.roster.list_invitations(company)
    if as_json:
        print_json(items)
    else:
        print_table(
            [[str(i.id), i.company, i.email, i.status, f"{i.expires_at:%Y-%m-%d}", i.firm or ""] for i in items],
            ["ID", "COMPANY", "EMAIL", "STATUS", "EXPIRES", "FIRM"],
        )


def register(cli: click.Group) -> None:
    cli.add_command(invitation)
