"""`cabinet transfer …`"""

from __future__ import annotations

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table


@click.group("transfer")
def transfer() -> None:
    """Billing transfers into a firm's wholesale billing plan."""


@transfer.command("allow")
@click.option("--company", required=True, help="The company whose billing moves.")
@click.option("--firm", required=True, help="A firm connected to the company.")
@pass_state
def allow(state: CliState, company: str, firm: str) -> None:
    """Allow a billing transfer, as the company's primary admin would ("Allow transfer").

    The firm's staff are emailed a Complete transfer link; they have 48 hours.

    Example: cabinet transfer allow --company "Boulangerie Roy" --firm "Tremblay CPA"
    """
    allowed = state.cabinet.transfers.allow(company, firm)
    click.echo(f"Billing transfer {allowed.id} of {allowed.company} to {allowed.firm} allowed until "
               f"{allowed.expires_at:%Y-%m-%d %H:%M} UTC.")


@transfer.command("revoke")
@click.option("--company", required=True, help="The company whose pending permission to withdraw.")
@pass_state
def revoke(state: CliState, company: str) -> None:
    """Withdraw a pending billing-transfer permission (the firm is told)."""
    revoked = state.cabinet.transfers.revoke_by_name(company)
    click.echo(f"Billing transfer {revoked.id} of {revoked.company} to {revoked.firm} revoked.")


@transfer.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List billing-transfer permissions and their state."""
    items = state.cabinet.transfers.list()
    if as_json:
        print_json(items)
    else:
        print_table(
            [[str(t.id), t.company, t.firm, t.status, f"{t.expires_at:%Y-%m-%d %H:%M}"] for t in items],
            ["ID", "COMPANY", "FIRM", "STATE", "EXPIRES (UTC)"],
        )


def register(cli: click.Group) -> None:
    cli.add_command(transfer)
