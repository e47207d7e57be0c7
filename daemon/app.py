"""The composition root: builds every part of Cabinet from the configuration.

Nothing else constructs engines, signers, mailers or servers; adapters get
what they need from a ``Cabinet`` instance passed to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from datetime import timedelta
from typing import Any, Callable

from argon2 import PasswordHasher
from sqlalchemy import Engine, make_url
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, sessionmaker

from daemon import db, durable, instance
from daemon.accepts import Accepts
from daemon.auth import SignIn
from daemon.clock import Clock, SystemClock
from daemon.config import Config
from daemon.errors import ConfigError
from daemon.i18n import check_timezone
from daemon.links import Links
from daemon.passwords import Passwords
from daemon.client_actions import ClientActions
from daemon.company_admin import MANAGE_LINKS_PER_ADDRESS, MANAGE_LINKS_PER_IP, CompanyAdmin
from daemon.domain import DomainContext, Policy
from daemon.inbound import Inbound
from daemon.onboarding import Onboarding
from daemon.link_opens import LinkOpens
from daemon.links_explained import LinkExplainer
from daemon.new_accounts import NewAccounts
from daemon.password_resets import PasswordResets
from daemon.roster import Roster
from daemon.template_folders import TemplateFolders, template_folders
from daemon.transfers import BillingTransfers
from daemon.throttle import RequestLimit, SignInThrottle, ThrottlePolicy
from daemon.undeliverable import Undeliverable
from daemon.workspace import Workspace
from daemon.tokens import LinkSigner, SecretKeys
from mailer.outbox import Outbox, OutboxWorker
from mailer.queue import OutboxQueue
from mailer.render import EmailRenderer
from mailer.transports import MaildirTransport, SmtpTransport, Transport


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
    accepts: Accepts
    transfers: BillingTransfers
    onboarding: Onboarding
    company_admin: CompanyAdmin
    workspace: Workspace
    inbound: Inbound
    outbox: Outbox
    worker: OutboxWorker
    templates: TemplateFolders
    renderer: EmailRenderer
    sign_in: SignIn
    mail_queue: OutboxQueue
    link_explainer: LinkExplainer
    password_resets: PasswordResets
    new_accounts: NewAccounts
    client_actions: ClientActions
    link_opens: LinkOpens

    def close(self) -> None:
        self.accepts.close()
        self.passwords.close()
        db.close_sessions(self.sessions)
        self.engine.dispose()

    def ping_database(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")


def make_transport(config: Config) -> Transport:
    if config.mail.transport == "smtp":
        return SmtpTransport(config.mail.relay, config.mail.relay_timeout, config.mail.relay_connections)
    return MaildirTransport(config.mail.maildir)


def _holds_signed_work(config: Config) -> bool:
    """Whether the database already has firms: links signed with some key may be out there."""
    if config.is_sqlite:
        path = make_url(config.database_url).database
        if not path or path == ":memory:" or not Path(path).exists():
            return False  # not created yet (and connecting would create it)
    engine = db.make_engine(config.database_url)
    try:
        with engine.connect() as connection:
            if not sa_inspect(connection).has_table("firms"):
                return False
            return connection.exec_driver_sql("SELECT 1 FROM firms LIMIT 1").first() is not None
    finally:
        engine.dispose()


def initialise(config: Config, new_signing_key: bool = False) -> list[str]:
    """Create the data folder, the signing key and the schema; safe to run again.

    A missing key file next to a database that already has firms is a lost key (or a second
    instance set up without a copy of the first one's keys), not a first start: a new key would
    silently break every link already sent, so that needs ``new_signing_key``.
    """
    done: list[str] = []
    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    keys_file = config.security.secret_keys_file
    if not keys_file.exists() and not new_signing_key and _holds_signed_work(config):
        raise ConfigError(
            f"signing keys file {keys_file} does not exist, but the database already has firms: links "
            "already sent were signed with the missing key. Restore the file from a backup (or copy it "
            "from another instance on this database); to make a new key anyway, and have every link "
            "already sent stop working, run `cabinet init --new-signing-key`"
        )
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
        done.append("database schema is up to date")
        done.append(instance.record_public_url(engine, config, SystemClock().now()))
    finally:
        engine.dispose()
    return done


def build(config: Config, clock: Clock | None = None, dns_txt: Callable[..., Any] | None = None) -> Cabinet:
    """Wire Cabinet together. ``clock`` is the system clock unless a caller (a test) passes one;
    ``dns_txt`` looks up DKIM keys (dkimpy's DNS resolver unless a test passes a stand-in)."""
    clock = clock or SystemClock()
    try:
        check_timezone(config.general.timezone)
    except Exception as exc:
        raise ConfigError(f"[general] timezone: {exc}") from None
    if config.is_sqlite and not config.storage.data_dir.exists():
        raise ConfigError(f"data folder {config.storage.data_dir} does not exist; run `cabinet init` first")
    templates = template_folders(config.templates.dir)
    keys = SecretKeys.load(config.security.secret_keys_file)
    engine = db.make_engine(config.database_url)
    # Links carry the public URL recorded with the instance, whichever command queues them.
    config = instance.with_recorded_public_url(config, engine)
    sessions = db.make_sessionmaker(engine)
    signer = LinkSigner(keys, clock)
    links = Links(config.http.public_url)
    passwords = Passwords(PasswordHasher(
        time_cost=config.value("security", "password_time_cost"),
        memory_cost=config.value("security", "password_memory_kib"),
    ))
    renderer = EmailRenderer(templates.search_path("email"))
    outbox = Outbox(
        renderer, signer, clock, config.mail.from_address, config.smtp.domain, config.general.product_name
    )
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
            manage_invitations_per_day=config.limits.manage_invitations_per_day,
        ),
    )
    roster = Roster(ctx)
    onboarding = Onboarding(ctx)
    for key in ("relay_timeout", "give_up_after", "claim_lease"):
        if getattr(config.mail, key) <= 0:
            raise ConfigError(f"[mail] {key} must be a number of seconds above 0")
    undeliverable = Undeliverable(ctx)
    accepts = Accepts(roster, plan_on_loop=engine.dialect.name == "sqlite")
    worker = OutboxWorker(
        sessions,
        make_transport(config),
        clock,
        on_bounce=undeliverable.bounced,
        on_give_up=undeliverable.gave_up,
        compose=outbox.compose,
        give_up_after=timedelta(seconds=config.mail.give_up_after),
        poll_interval=config.mail.poll_interval,
        lease=timedelta(seconds=config.mail.claim_lease),
        # One email in flight per relay connection; a Maildir takes a batch at a time, in order.
        concurrency=config.mail.relay_connections if config.mail.transport == "smtp" else 1,
        give_way=accepts,
    )
    throttle = SignInThrottle(
        sessions,
        clock,
        ThrottlePolicy(
            window=timedelta(minutes=config.limits.sign_in_window_minutes),
            per_address=config.limits.sign_in_failures_per_address,
            per_ip=config.limits.sign_in_failures_per_ip,
        ),
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
        # SQLite's plan read runs on the event loop; PostgreSQL's is a round trip, read in the batch's thread.
        accepts=accepts,
        transfers=BillingTransfers(ctx),
        onboarding=onboarding,
        company_admin=CompanyAdmin(ctx, roster, RequestLimit(
            sessions, clock, "manage",
            # The sign-in window, so that the sign-in's sweep of old rows keeps these right too.
            ThrottlePolicy(window=timedelta(minutes=config.limits.sign_in_window_minutes),
                           per_address=MANAGE_LINKS_PER_ADDRESS, per_ip=MANAGE_LINKS_PER_IP),
        )),
        workspace=Workspace(ctx),
        inbound=Inbound(ctx, roster, config.inbound, config.smtp.domain, config.mail.from_address, dns_txt,
                        answer_interval=timedelta(minutes=config.limits.unproven_reply_answer_minutes)),
        outbox=outbox,
        worker=worker,
        templates=templates,
        renderer=renderer,
        sign_in=SignIn(sessions, roster, passwords, throttle),
        mail_queue=OutboxQueue(sessions, clock, outbox.compose),
        link_explainer=LinkExplainer(ctx),
        password_resets=PasswordResets(ctx),
        new_accounts=NewAccounts(ctx),
        client_actions=ClientActions(ctx, onboarding, roster),
        link_opens=LinkOpens(ctx),
    )
