"""A client company's primary admin, acting through a "manage my company" link.

Client admins have no password here. `send_link` emails the primary admin a
short-lived link bound to their address; each action on the page it opens is
authorised by that link (and a CSRF token), and refused once the address is no
longer the company's primary admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.domain import DomainContext, DomainService, clean_name, normalise_email
from daemon.errors import InvalidInput, LimitReached, LinkTampered, NotAllowed
from daemon.models import Client, Company, Event, Firm, Invitation, InvitationState
from daemon.roster import Roster
from daemon.throttle import RequestLimit
from daemon.tokens import Purpose

# "Manage my company" requests from the start page per sign-in window (15 minutes by default): a few
# per address (a second try when the first email is slow to come), more per IP (an office shares one).
MANAGE_LINKS_PER_ADDRESS = 3
MANAGE_LINKS_PER_IP = 20


@dataclass(frozen=True)
class CompanyAdminView:
    company_id: int
    company: str
    admin_email: str
    admin_name: str
    subscription: str
    has_quickbooks_time: bool
    connected_firms: tuple[str, ...]
    pending_invitations: tuple[str, ...]
    trial_ends_at: datetime | None
    payment_details_at: datetime | None
    # The primary admin's recorded language and zone: the manage page speaks as the email did.
    locale: str = ""
    timezone: str = ""
    # (id, address) of each invitation waiting for an answer, for the page's "Withdraw" buttons.
    withdrawable: tuple[tuple[int, str], ...] = ()


class CompanyAdmin(DomainService):
    def __init__(self, ctx: DomainContext, roster: Roster, link_requests: RequestLimit | None = None) -> None:
        super().__init__(ctx)
        self._roster = roster
        self._link_requests = link_requests

    def invite(self, company_id: int, email: str, key: str | None = None) -> None:
        """The primary admin invites an accountant from a manage link, within the daily limit.

        A manage link can be forwarded; the limit keeps a leaked one from
        becoming a way to send Cabinet's email to anyone, as often as wanted.
        """
        with self._sessions() as s:
            company = s.get(Company, company_id)
            if company is None:
                raise LinkTampered("link.no_company")
            name = company.name
        self._roster.send_invitation(name, email, "link", key, check=self._within_daily_invitations)

    def _within_daily_invitations(self, s: Session, company: Company) -> None:
        limit = self._policy.manage_invitations_per_day
        # Lock the company row (PostgreSQL) so two posts at once cannot both pass; SQLite's
        # write transaction already serialises them.
        s.execute(select(Company.id).where(Company.id == company.id).with_for_update())
        since = self._now() - timedelta(days=1)
        sent = s.scalar(
            select(func.count(Event.id)).where(
                Event.company_id == company.id,
                Event.kind == "invitation.sent",
                Event.channel == "link",
                Event.at > since,
            )
        )
        if (sent or 0) >= limit:
            raise LimitReached("invite.daily_limit", retry_after=86400, company=company.name, limit=limit)

    def send_link(self, company_name: str, channel: str = "cli") -> str:
        """Email the primary admin a link to manage the company; returns the link."""
        with self._transaction() as s:
            return self._send_link(s, self._company_by_name(s, company_name), "operator", channel)

    def _send_link(self, s: Session, company: Company, actor: str, channel: str) -> str:
        token = self._signer.sign(Purpose.MANAGE, ["company", company.id, company.admin_email])
        url = self._links.manage(token)
        self._notify_company_admin(
            s, company, "manage_link",
            {"url": url, "expires_at": self._now() + self._policy.manage_link_ttl}, auto=False,
        )
        self._event(s, "company.manage_link_sent", actor, channel, company_id=company.id)
        return url

    def request_link(self, email: str, ip: str, channel: str = "link") -> None:
        """"Manage my company" on the start page: a manage link to each company ``email`` is primary admin of.

        Says nothing either way (no error for an unknown or malformed address), so
        the form cannot tell who administers what; counted per address and per
        client IP before anything is looked up, so it cannot flood a mailbox
        or probe addresses quickly.
        """
        limit = self._link_requests
        if limit is not None and not limit.take(email, ip):
            raise LimitReached("manage_link.wait", retry_after=limit.window_seconds, minutes=limit.window_seconds // 60)
        try:
            address = normalise_email(email)
        except InvalidInput:
            return
        with self._transaction() as s:
            companies = s.scalars(select(Company).where(Company.admin_email == address).order_by(Company.id)).all()
            for company in companies:
                self._send_link(s, company, address, channel)

    def set_primary_admin(self, company_name: str, email: str, name: str | None, channel: str = "cli") -> str:
        """Hand the company to another primary admin; links issued to the previous one stop working."""
        address = normalise_email(email)
        with self._transaction() as s:
            company = self._company_by_name(s, company_name)
            previous = company.admin_email
            company.admin_email = address
            company.admin_name = clean_name(name) if name else address.split("@")[0]
            self._event(s, "company.primary_admin_changed", "operator", channel, company_id=company.id,
                        previous=previous, new=address)
            return address

    def resolve(self, token: str) -> tuple[int, str]:
        """The company and address a manage link speaks for; refused if that address is no longer primary admin."""

        def no_longer_admin(company: Company, email: object) -> NotAllowed:
            return NotAllowed("transfer.no_longer_primary_admin", email=email, company=company.name)

        with self._sessions() as s:
            company = self._row_from_token(
                s, Purpose.MANAGE, token, Company, what="company", max_age=self._policy.manage_link_ttl,
                tag="company", bound="admin_email", mismatch=no_longer_admin,
            )
            return company.id, company.admin_email

    def view(self, company_id: int) -> CompanyAdminView:
        with self._sessions() as s:
            company = s.get(Company, company_id)
            assert company is not None
            firms = s.scalars(
                select(Firm.name)
                .join(Client, Client.firm_id == Firm.id)
                .where(Client.company_id == company.id, Client.connected_at.is_not(None))
                .order_by(Firm.name_key)
            ).all()
            invited = s.execute(
                select(Invitation.id, Invitation.email)
                .where(Invitation.company_id == company.id, Invitation.state == InvitationState.PENDING,
                       Invitation.expires_at > self._now())
                .order_by(Invitation.email, Invitation.id)
            ).all()
            return CompanyAdminView(
                company_id=company.id,
                company=company.name,
                admin_email=company.admin_email,
                admin_name=company.admin_name,
                subscription=company.subscription,
                has_quickbooks_time=company.has_quickbooks_time,
                connected_firms=tuple(firms),
                pending_invitations=tuple(email for _, email in invited),
                trial_ends_at=company.trial_ends_at,
                payment_details_at=company.payment_details_at,
                locale=company.admin_locale,
                timezone=company.admin_timezone,
                withdrawable=tuple((id_, email) for id_, email in invited),
            )

    def payment_link(self, company_id: int) -> str | None:
        """The payment-details link, for a company on a direct-discount trial."""
        with self._sessions() as s:
            company = s.get(Company, company_id)
            if company is None or company.subscription != "direct-discount":
                return None
            return self._payment_url(company.id)
