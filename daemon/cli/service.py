"""`cabinet init`, `cabinet serve` and `cabinet demo`."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys

import click

from daemon.app import initialise
from daemon.cli.state import CliState, pass_state
from daemon.errors import AlreadyExists
from daemon.service import Service


@click.command("init")
@pass_state
def init(state: CliState) -> None:
    """Create the data folder, the database schema and a signing key (safe to run again)."""
    for line in initialise(state.config):
        click.echo(line)
    click.echo(f"Cabinet is ready in {state.config.storage.data_dir}. Next: cabinet serve")


async def _serve(service: Service) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    await service.start()
    await stop.wait()
    logging.getLogger(__name__).info("stopping: finishing in-flight work")
    await service.stop()


@click.command("serve")
@pass_state
def serve(state: CliState) -> None:
    """Run Cabinet in the foreground: HTTP links, SMTP listener and the outbox worker.

    SIGTERM or Ctrl-C stops it cleanly; SIGHUP reloads the templates.
    """
    logging.basicConfig(
        level=state.config.general.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    asyncio.run(_serve(Service(state.cabinet)))


DEMO_FIRM = "Demo Firm"
DEMO_STAFF = "accountant@example.com"
DEMO_COMPANY = "Demo Bakery"


@click.command("demo")
@pass_state
def demo(state: CliState) -> None:
    """Seed a firm, an accountant, a company and one invitation; print the link and sign-in.

    Safe to run again: what exists is kept and a fresh invitation link is printed.
    """
    initialise(state.config)
    roster = state.cabinet.roster
    credentials = state.config.storage.data_dir / "demo-password"
    if not credentials.exists():
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(12) + "\n")
    password = credentials.read_text().strip()
    for create in (
        lambda: roster.add_firm(DEMO_FIRM, "office@example.com"),
        lambda: roster.add_staff(DEMO_STAFF, "Alex Accountant", [DEMO_FIRM], password),
        lambda: roster.add_company(DEMO_COMPANY, "owner@example.com", "Olivia Owner"),
    ):
        try:
            create()
        except AlreadyExists:
            pass
    invitation = roster.send_invitation(DEMO_COMPANY, DEMO_STAFF)
    click.echo(f"Demo data is ready in {state.config.storage.data_dir}.")
    click.echo("")
    click.echo(f"  Invitation link:  {invitation.url}")
    click.echo(f"  Sign in as:       {DEMO_STAFF}")
    click.echo(f"  Password:         {password}")
    click.echo("")
    click.echo("Open the link while `cabinet serve` runs. Emails land in the Maildir: `cabinet mail list`.")


def register(cli: click.Group) -> None:
    cli.add_command(init)
    cli.add_command(serve)
    cli.add_command(demo)
