"""`cabinet init`, `cabinet serve` and `cabinet demo`."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
from typing import TYPE_CHECKING

import click

from daemon import durable
from daemon.app import initialise
from daemon.cli.state import CliState, pass_state
from daemon.config import load_config
from daemon.errors import AlreadyExists, CabinetError, ConfigError
from daemon.faults import storage_fault
from daemon.logs import setup_logging

if TYPE_CHECKING:
    from daemon.service import Service


def _initialise(state: CliState, new_signing_key: bool = False) -> list[str]:
    """``initialise``, with a data folder, key file or Maildir it cannot create or write (a parent that is a
    file, a path under /proc, no permission) said in one line with exit 78, as ``CliState.cabinet`` says
    one it cannot read, rather than a traceback. A full or read-only disk stays a storage fault (exit 75)."""
    try:
        return initialise(state.config, new_signing_key=new_signing_key)
    except OSError as exc:
        if storage_fault(exc) is not None:
            raise
        where = exc.filename or "a file Cabinet needs"
        raise ConfigError(
            f"cannot create {where}: {exc.strerror or exc}; check [storage] data_dir (and [mail] maildir, "
            "[security] secret_keys_file) in the configuration"
        ) from None


@click.command("init")
@click.option("--new-signing-key", is_flag=True,
              help="Make a new signing key even though the database has firms (every link already sent stops working).")
@pass_state
def init(state: CliState, new_signing_key: bool) -> None:
    """Create the data folder, the database schema and a signing key (safe to run again).

    Refuses to make a new key when the key file is missing but the database already has firms
    (a lost key, or a second instance without a copy of the keys): restore the file instead.
    """
    for line in _initialise(state, new_signing_key):
        click.echo(line)
    click.echo(f"Cabinet is ready in {state.config.storage.data_dir}. Next: cabinet serve")


def _freeze_heap() -> int:
    """Move every object alive now out of the collector's sight (``gc.freeze``); returns how many.

    Once serving, the heap is ~105k tracked objects (the app, SQLAlchemy's metadata and
    compiled statements, the templates), nearly all kept for the process's life. A full
    collection walks them all: 45-60 ms of CPU (measured on a loaded machine), stalling the
    one event loop and every request in flight. In the bench's accept rounds ~4 objects per
    accept reached the oldest generation, which at that heap makes one full collection per
    ~7,000 accepts. Frozen, the heap is skipped: a full collection walks only the ~16k objects
    left after the bench (and comes more often, as its trigger is a quarter of what it walks).
    Young collections are left as they are (threshold 700): in the bench's rounds they take
    0.3% of a link GET's CPU and under 1% of an accept's, and no full collection ran there.
    Collected first, so start-up garbage is freed rather than kept for good. No fork follows.
    """
    gc.unfreeze()  # a reload: what the replaced templates held becomes collectable again
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _reload(state: CliState, service: Service) -> None:
    """SIGHUP: re-read what can change without a restart (templates, log level)."""
    log = logging.getLogger("daemon.service")
    service.reload()
    log.info("heap frozen again after the reload: %d objects", _freeze_heap())
    try:
        fresh = load_config(state.config.source)
    except CabinetError as exc:
        log.error("SIGHUP: config not reloaded: %s", exc)
        return
    logging.getLogger().setLevel(fresh.general.log_level)
    log.info("SIGHUP: templates and log level (%s) reloaded; other settings need a restart", fresh.general.log_level)


async def _serve(state: CliState, service: Service) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, state, service)
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    logging.getLogger("daemon.service").info("start-up heap frozen: %d objects the collector no longer walks",
                                             _freeze_heap())
    await stop.wait()
    logging.getLogger(__name__).info("stopping: finishing in-flight work")
    await service.stop()


@click.command("serve")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line, for log collectors.")
@pass_state
def serve(state: CliState, log_format: str) -> None:
    """Run Cabinet in the foreground: HTTP links, SMTP/LMTP listener, inbound processing,
    outbox worker and scheduled jobs, in one asyncio loop. Logs go to stdout.

    SIGTERM or Ctrl-C: stop accepting, finish in-flight work, exit 0.
    SIGHUP: reload templates and the log level.
    """
    # Imported here: the HTTP and SMTP stacks (aiohttp, aiosmtpd) are only for `serve`, and every
    # other command starts faster without them.
    from daemon.service import Service

    setup_logging(state.config.general.log_level, log_format)
    asyncio.run(_serve(state, Service(state.cabinet)))


DEMO_FIRM = "Demo Firm"
DEMO_STAFF = "accountant@example.com"
DEMO_COMPANY = "Demo Bakery"


@click.command("demo")
@pass_state
def demo(state: CliState) -> None:
    """Seed a firm, an accountant, a company and one invitation; print the link and sign-in.

    Safe to run again: what exists is kept. A pending invitation's link is printed
    again without a new email; once the company is on the firm's client list,
    nothing is sent at all.
    """
    _initialise(state)
    roster = state.cabinet.roster
    credentials = state.config.storage.data_dir / "demo-password"
    if not credentials.exists():
        # The demo account's password hash is in the database: the file must outlive a crash too.
        durable.write_file(credentials, (secrets.token_urlsafe(12) + "\n").encode(), 0o600, exclusive=True)
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
    connected = any(c.company == DEMO_COMPANY for c in roster.list_clients(DEMO_FIRM))
    invitation = None if connected else roster.pending_invitation(DEMO_COMPANY, DEMO_STAFF)
    reused = invitation is not None
    if not connected and invitation is None:
        invitation = roster.send_invitation(DEMO_COMPANY, DEMO_STAFF)
    click.echo(f"Demo data is ready in {state.config.storage.data_dir}.")
    click.echo("")
    if invitation is not None:
        note = "  (the invitation already sent; no new email)" if reused else ""
        click.echo(f"  Invitation link:  {invitation.url}{note}")
    else:
        click.echo(f"  {DEMO_COMPANY} is already on {DEMO_FIRM}'s client list: nothing to send.")
    click.echo(f"  Sign in as:       {DEMO_STAFF}")
    click.echo(f"  Password:         {password}")
    click.echo("")
    click.echo("Open the link while `cabinet serve` runs. Emails land in the Maildir: `cabinet mail list`.")


def register(cli: click.Group) -> None:
    cli.add_command(init)
    cli.add_command(serve)
    cli.add_command(demo)
