"""The database schema, as SQLAlchemy 2.0 declarative models.

Only data and constraints live here; the rules that change these rows live
in ``daemon.roster``. Every lookup a link, a reply or a sweep makes has an
index, and uniqueness rules the domain relies on are enforced by the database
too (so two instances racing cannot both win).
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from daemon.clock import utc_text

# Stable constraint names so Alembic migrations mean the same thing on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


_NAIVE = "naive datetime given to the database; use an aware UTC datetime"


def sqlite_utc_text(value: datetime | None) -> str | None:
    """``UTCDateTime``'s bind processor on SQLite: the text SQLAlchemy's DATETIME writes for the UTC instant,
    from the fields (its own processor fills the same format from a dict of them: 20 k instructions a
    value, a tuple of them 13 k, ``utc_text`` about 6 k; an accept binds about ten). ``process_bind_param``'s
    checks, inline: one function for every ``UTCDateTime`` column, which depends on nothing but its value
    (``daemon.prepared`` writes a row's repeats of one instant once)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(_NAIVE)
    # SQLAlchemy's SQLite DATETIME storage format (``sqlite.DATETIME``'s default), naive UTC: "%04d-%02d-%02d
    # %02d:%02d:%02d.%06d", from digit tables.
    return utc_text(value)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(_NAIVE)
        return value.astimezone(timezone.utc)

    def bind_processor(self, dialect: Any) -> Any:
        """On SQLite, ``sqlite_utc_text``; elsewhere the driver takes the datetime (``process_bind_param``)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return sqlite_utc_text

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)

    if TYPE_CHECKING:
        # Every model here gets a Table of its own (``__tablename__``), which the Core inserts and
        # updates of ``Model.__table__`` need; DeclarativeBase types it as any FromClause (a model may
        # be mapped to a join or a subquery, none here is).
        __table__: ClassVar[Table]


# -- states ------------------------------------------------------------------------
# Every row that moves through states names them here; a CHECK constraint keeps the
# database to the same list, and daemon.transitions is the only code that changes them.


class InvitationState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    REVOKED = "revoked"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    BOUNCED = "bounced"


class TransferState(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"
    REVOKED = "revoked"
    DECLINED = "declined"
    SUPERSEDED = "superseded"


class SetupState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"


class InboundState(StrEnum):
    """A received message: processed once, or quarantined after repeated failures (retry puts it back)."""

    RECEIVED = "received"
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"


class ClientStatus(StrEnum):
    ACTIVE = "active"
    TRIAL = "trial"
    SETUP_PENDING = "setup pending"
    DISCOUNT_LAPSED = "discount lapsed"


def one_of(column: str, states: type[StrEnum]) -> CheckConstraint:
    """The CHECK constraint that keeps ``column`` to the values of ``states`` (named ck_<table>_<column>)."""
    listed = ", ".join(f"'{state.value}'" for state in states)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


class Firm(Base):
    __tablename__ = "firms"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)  # casefolded name
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    memberships: Mapped[list[Membership]] = relationship(back_populates="firm")


class User(Base):
    """A firm staff member (accountant) who can sign in."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised, lower-case
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    locale: Mapped[str] = mapped_column(String(8))
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A disabled account cannot sign in; its row stays for the history that names it.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A password reset link issued before this moment is spent (single use without a token table).
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    memberships: Mapped[list[Membership]] = relationship(back_populates="user")

    @property
    def password_stamp(self) -> str:
        """What a password reset link is bound to: it changes with the password, so a link works once."""
        return self.password_changed_at.isoformat() if self.password_changed_at else ""


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("user_id", "firm_id"),
        # A firm's staff in user order from the index alone: the accept's read tells them in that order
        # (daemon.accept_read), which SQLite sorted in a temporary b-tree per accept (migration 0024).
        Index("ix_memberships_firm_user", "firm_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    firm_id: Mapped[int] = mapped_column(ForeignKey("firms.id"))  # ix_memberships_firm_user
    role: Mapped[str] = mapped_column(String(20))  # "admin" | "staff"

    user: Mapped[User] = relationship(back_populates="memberships")
    firm: Mapped[Firm] = relationship(back_populates="memberships")


class Company(Base):
    """A client's QuickBooks company (the books)."""

    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # "business" | "individual"
    admin_email: Mapped[str] = mapped_column(String(320), index=True)  # the primary admin
    admin_name: Mapped[str] = mapped_column(String(200))
    admin_locale: Mapped[str] = mapped_column(String(8))
    admin_timezone: Mapped[str] = mapped_column(String(64))
    subscription: Mapped[str] = mapped_column(String(20))  # none|self-paid|wholesale|direct-discount
    has_quickbooks_time: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The firm whose wholesale plan pays for this company, when subscription is "wholesale".
    billing_firm_id: Mapped[int | None] = mapped_column(ForeignKey("firms.id"))
    # Direct discount: the 30-day trial, and when payment details were recorded (never the card itself).
    trial_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    payment_details_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    payment_name: Mapped[str | None] = mapped_column(String(200))

    products: Mapped[list[Product]] = relationship(secondary="company_products", order_by="Product.position")


class Product(Base):
    """The QuickBooks and Payroll catalogue (rows seeded by a migration: data, not code)."""

    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # "quickbooks" | "payroll"
    position: Mapped[int] = mapped_column(Integer)


class CompanyProduct(Base):
    __tablename__ = "company_products"

    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), primary_key=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), primary_key=True)


def search_key(*parts: str | None) -> str:
    """What the roster's search compares: case and accents folded away ("Érablière" finds "erabl")."""
    folded = unicodedata.normalize("NFKD", " ".join(p for p in parts if p).casefold())
    return "".join(c for c in folded if not unicodedata.combining(c))


def _client_search_key(context: Any) -> str:
    params = context.get_current_parameters()
    return search_key(params.get("name"))


class Client(Base):
    """An entry on a firm's client roster."""

    __tablename__ = "clients"
    __table_args__ = (
        UniqueConstraint("firm_id", "company_id"),
        UniqueConstraint("firm_id", "name_key"),
        one_of("status", ClientStatus),
        # The roster page sorts a firm's clients by name as a dictionary does, or by date added.
        # (id last, as in the pages' order: a deep page's OFFSET is read on the index alone; 0015.)
        Index("ix_clients_firm_search", "firm_id", "search_key", "id"),
        Index("ix_clients_firm_created", "firm_id", "created_at", "id"),
        # Pending and the navigation count a firm's clients in their trial period (migration 0014).
        Index("ix_clients_status_firm", "status", "firm_id"),
        # The roster's count under a billing filter (migration 0015; the search's trigram index is
        # there too, outside these models: daemon/client_search.py).
        Index("ix_clients_billing_firm", "billing", "firm_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No index of its own: four of the above begin with firm_id (migration 0020).
    firm_id: Mapped[int] = mapped_column(ForeignKey("firms.id"))
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    billing: Mapped[str] = mapped_column(String(20))  # "self-paid" | "wholesale" | "direct" | "none"
    status: Mapped[str] = mapped_column(String(30))  # a ClientStatus
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A staff member who is the company's primary admin ("Make me the primary admin").
    primary_admin_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # The name folded (case, accents) for the roster's search and sort (set on insert; nothing renames a client).
    search_key: Mapped[str] = mapped_column(String(600), default=_client_search_key)

    firm: Mapped[Firm] = relationship()
    company: Mapped[Company | None] = relationship()
    primary_admin: Mapped[User | None] = relationship()


class FirmClientCount(Base):
    """How many clients a firm has with one status and billing, spread over slots: kept by triggers on
    ``clients`` (migrations 0016, 0017), never written by the application; the roster's numbers are
    SUMs of these rows (a key's slots let concurrent transactions add clients to one firm without
    waiting for each other on PostgreSQL; SQLite uses slot 0)."""

    __tablename__ = "firm_client_counts"

    firm_id: Mapped[int] = mapped_column(ForeignKey("firms.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(30), primary_key=True)
    billing: Mapped[str] = mapped_column(String(20), primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    clients: Mapped[int]


class BillingTransfer(Base):
    """A primary admin's permission for a firm to move the company onto its wholesale plan (flow 2)."""

    __tablename__ = "billing_transfers"
    __table_args__ = (
        # One pending permission per company: allowing again replaces it.
        Index(
            "uq_billing_transfers_pending",
            "company_id",
            unique=True,
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
        Index("ix_billing_transfers_state_expires", "state", "expires_at"),
        one_of("state", TransferState),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    firm_id: Mapped[int] = mapped_column(ForeignKey("firms.id"), index=True)
    authorized_by: Mapped[str] = mapped_column(String(320))
    authorized_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(20))  # a TransferState
    nonce: Mapped[str] = mapped_column(String(32))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(320))

    company: Mapped[Company] = relationship()
    firm: Mapped[Firm] = relationship()


class SetupInvitation(Base):
    """A firm's invitation to a new client's contact to become the company's primary admin (flow 3)."""

    __tablename__ = "setup_invitations"
    __table_args__ = (one_of("state", SetupState),)

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    firm_id: Mapped[int] = mapped_column(ForeignKey("firms.id"))
    email: Mapped[str] = mapped_column(String(320))
    nonce: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(20))  # a SetupState
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    company: Mapped[Company] = relationship()
    firm: Mapped[Firm] = relationship()


class SentReminder(Base):
    """Reminders and deadline notices already sent: the unique key makes every sweep idempotent."""

    __tablename__ = "sent_reminders"
    __table_args__ = (UniqueConstraint("kind", "ref_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    ref_id: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Invitation(Base):
    """A client's invitation to an accountant (flow 1)."""

    __tablename__ = "invitations"
    __table_args__ = (
        # One live invitation per company and address: a second send supersedes the first.
        Index(
            "uq_invitations_pending",
            "company_id",
            "email",
            unique=True,
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
        Index("ix_invitations_state_expires", "state", "expires_at"),
        one_of("state", InvitationState),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), index=True)  # normalised
    invited_by: Mapped[str] = mapped_column(String(320))  # who sent it (the client admin)
    nonce: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(20))  # an InvitationState
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    firm_id: Mapped[int | None] = mapped_column(ForeignKey("firms.id"))
    accepted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("invitations.id"))
    renewal_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    bounce_reason: Mapped[str | None] = mapped_column(Text)

    company: Mapped[Company] = relationship()
    firm: Mapped[Firm | None] = relationship()
    accepted_by: Mapped[User | None] = relationship()


class Event(Base):
    """Append-only activity log: who did what, when, through which channel."""

    __tablename__ = "events"
    __table_args__ = (
        # By company and kind: "is this link's opening recorded?" (daemon.link_opens.opened_before, in
        # every link page's read) reads the company's first openings alone, where an index on the company
        # alone read every event of the company from the table. Its prefix serves what that index served.
        Index("ix_events_company_kind", "company_id", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(60))
    actor: Mapped[str] = mapped_column(String(320))
    channel: Mapped[str] = mapped_column(String(20))  # "link" | "cli" | "reply" | "scheduler"
    # No index of its own: every query on events starts from its client, company or kind (migration 0021).
    firm_id: Mapped[int | None] = mapped_column(ForeignKey("firms.id"))
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id"))  # ix_events_company_kind
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), index=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON


class OutboxMessage(Base):
    """An email queued in the same transaction as the change that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    # The reference signed into this email's reply+ and bounce+ addresses.
    ref: Mapped[str] = mapped_column(String(24), unique=True)
    kind: Mapped[str] = mapped_column(String(60))  # template name, e.g. "invitation"
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(20))  # "pending" | "sent" | "failed" | "bounced"
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    # A worker's lease on this row while it sends it (see mailer.outbox.OutboxWorker._claim): the
    # token names the claim, so only its holder renews the lease or records the result.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    # When the email (re)entered the queue: the retry budget ([mail] give_up_after) counts from here.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The relay's (or the Maildir's) last answer, success or failure, as an operator reads it.
    last_answer: Mapped[str | None] = mapped_column(Text)
    # What the email is about, so a bounce or a reply finds its way back.
    invitation_id: Mapped[int | None] = mapped_column(ForeignKey("invitations.id"), index=True)
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id"))
    firm_id: Mapped[int | None] = mapped_column(ForeignKey("firms.id"))
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    bounce_reason: Mapped[str | None] = mapped_column(Text)
    # Who the email was for when it was queued ("company_admin" | "firm_staff" | "accountant"):
    # a reply is forwarded to the other side from this, never from addresses that changed since.
    audience: Mapped[str | None] = mapped_column(String(20))
    # What to render (template, locale, zone, facts; JSON): the worker renders from it.
    content: Mapped[str | None] = mapped_column(Text)
    # The bytes sent: rendered and serialised once, by the worker at the first attempt (every
    # resend is the same bytes); NULL until then. The last column: SQLite keeps a big value in
    # overflow pages, and a column after it could only be read by walking them.
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)


class WebSession(Base):
    """A signed-in browser session; the cookie holds a random id, the table its hash."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie id
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class InboundMessage(Base):
    """A message received by the SMTP/LMTP listener, stored before it was acknowledged."""

    __tablename__ = "inbound"
    __table_args__ = (Index("ix_inbound_state_next", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    mail_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[str] = mapped_column(Text)  # JSON list
    # received -> processed | duplicate | quarantined; processing is retried until quarantined.
    state: Mapped[str] = mapped_column(String(20), index=True)
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # sha256 of the bytes; unique, so the same delivery stored twice (a lost 250) is one row.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str | None] = mapped_column(String(20))  # bounce | auto-reply | reply | command | unknown
    outcome: Mapped[str | None] = mapped_column(Text)  # what processing did, in words
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The message as received; last, after its metadata (see OutboxMessage.raw).
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class InstanceSetting(Base):
    """What the instance decided once and every command must agree on (e.g. the public URL of links)."""

    __tablename__ = "instance_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RequestKey(Base):
    """An idempotency key: a second press of the same button within the window gets the first result.

    The key is a hash the adapter derives from what makes two requests the same
    (the signed link and the form's fields); the primary key makes two racing
    presses queue, and the second reads what the first made.
    """

    __tablename__ = "request_keys"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex
    result_id: Mapped[int | None] = mapped_column(Integer)  # the row the first press made
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SignInFailure(Base):
    """One failed sign-in, keyed by address ("email:…") and by client IP ("ip:…").

    Kept in the database, not in memory, so every instance of a PostgreSQL
    deployment counts the same failures; rows older than the window are swept.
    """

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(400))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Heartbeat(Base):
    """One row that `/readyz` rewrites: proof that the database accepts a write right now."""

    __tablename__ = "heartbeat"

    id: Mapped[int] = mapped_column(primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobFailure(Base):
    """A scheduled job's row that failed: retried later, parked after too many tries.

    The rest of the sweep goes on; a parked row is skipped until an operator
    retries it (`cabinet jobs retry`). Deleted when the row succeeds.
    """

    __tablename__ = "job_failures"
    __table_args__ = (UniqueConstraint("job", "ref_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(40))
    ref_id: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    parked: Mapped[bool] = mapped_column(default=False)
