"""The composition root: builds every part of Cabinet from the configuration.

Nothing else constructs engines, signers, mailers or servers; adapters get
what they need from a ``Cabinet`` instance passed to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from daemon import db, durable
from daemon.clock import Clock, SystemClock
from daemon.config import Config
from daemon.errors import ConfigError
from daemon.i18n import check_timezone
from daemon.links import Links
from daemon.passwords import Passwords
from daemon.company_admin import CompanyAdmin
from daemon.domain import DomainContext, Policy
from daemon.inbound import Inbound
from daemon.onboarding import Onboarding
from daemon.roster import Roster
from daemon.transfers import BillingTransfers
from daemon.tokens import LinkSigner, SecretKeys
from mailer.outbox import Outbox, OutboxWorker
from mailer.render import EmailRenderer
from mailer.transports import MaildirTransport, SmtpTransport, Transport

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass
class Cabinet:
    config: Config
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    signer: LinkSigner
    links: Links
    passwords: Passwords
    roster: Roster
    transfers: BillingTransfers
    onboarding: Onboarding
    company_admin: CompanyAdmin
    inbound: Inbound
    outbox: Outbox
    worker: OutboxWorker
    templates_dir: Path

    def close(self) -> None:
        self.engine.dispose()

    def ping_database(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")


def make_transport(config: Config) -> Transport:
    if config.mail.transport == "smtp":
        return SmtpTransport(config.mail.relay)
    return MaildirTransport(config.mail.maildir)


def initialise(config: Config) -> list[str]:
    """Create the data folder, the signing key and the schema; safe to run again."""
    done: list[str] = []
    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    keys_file = config.security.secret_keys_file
    if not keys_file.exists():
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        # Durable before any link is signed with it (0600 from the start: never readable by others).
        text = (
            "# Cabinet signing keys, oldest first. Append a new line to rotate;\n"
            "# the last key signs, every key listed verifies.\n"
            + SecretKeys.generate() + "\n"
        )
        durable.write_file(keys_file, text.encode("utf-8"), 0o600, exclusive=True)
        durable.fsync_dir(keys_file.parent.parent)
        done.append(f"created signing key {keys_file}")
    if config.mail.transport == "maildir":
        for sub in ("cur", "new", "tmp"):
            (config.mail.maildir / sub).mkdir(parents=True, exist_ok=True)
        for folder in (config.mail.maildir, config.mail.maildir.parent):
            durable.fsync_dir(folder)
    engine = db.make_engine(config.database_url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    done.append("database schema is up to date")
    return done


def build(
    config: Config, clock: Clock | None = None, templates_dir: Path = TEMPLATES_DIR,
    dns_txt: Callable[..., Any] | None = None,
) -> Cabinet:
    """Wire Cabinet together. ``clock`` is the system clock unless a caller (a test) passes one;
    ``dns_txt`` looks up DKIM keys (dkimpy's DNS resolver unless a test passes a stand-in)."""
    clock = clock or SystemClock()
    try:
        check_timezone(config.general.timezone)
    except Exception as exc:
        raise ConfigError(f"[general] timezone: {exc}") from None
    if config.is_sqlite and not config.storage.data_dir.exists():
        raise ConfigError(f"data folder {config.storage.data_dir} does not exist; run `cabinet init` first")
    keys = SecretKeys.load(config.security.secret_keys_file)
    engine = db.make_engine(config.database_url)
    sessions = db.make_sessionmaker(engine)
    signer = LinkSigner(keys, clock)
    links = Links(config.http.public_url)
    passwords = Passwords()
    renderer = EmailRenderer(templates_dir)
    outbox = Outbox(renderer, signer, clock, config.mail.from_address, config.smtp.domain)
    ctx = DomainContext(
        sessions=sessions,
        notifier=outbox,
        signer=signer,
        links=links,
        passwords=passwords,
        clock=clock,
        policy=Policy(
            invitation_ttl=timedelta(days=config.invitations.ttl_days),
            default_locale=config.general.default_locale,
            default_timezone=config.general.timezone,
        ),
    )
    roster = Roster(ctx)
    worker = OutboxWorker(
        sessions,
        make_transport(config),
        clock,
        max_attempts=config.mail.max_attempts,
        poll_interval=config.mail.poll_interval,
        lease=timedelta(seconds=config.mail.claim_lease),
    )
    return Cabinet(
        config=config,
        clock=clock,
        engine=engine,
        sessions=sessions,
        signer=signer,
        links=links,
        passwords=passwords,
        roster=roster,
        transfers=BillingTransfers(ctx),
        onboarding=Onboarding(ctx),
        company_admin=CompanyAdmin(ctx),
        inbound=Inbound(ctx, roster, config.inbound, config.smtp.domain, config.mail.from_address, dns_txt),
        outbox=outbox,
        worker=worker,
        templates_dir=templates_dir,
    )
