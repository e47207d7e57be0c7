"""A client company's primary admin, acting through a "manage my company" link.

Client admins have no password here. `send_link` emails the primary admin a
short-lived link bound to their address; each action on the page it opens is
authorised by that link (and a CSRF token), and refused once the address is no
longer the company's primary admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from daemon.domain import DomainService, clean_name, normalise_email
from daemon.errors import LinkTampered, NotAllowed
from daemon.models import Client, Company, Firm, Invitation
from daemon.tokens import Purpose


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


class CompanyAdmin(DomainService):
    def send_link(self, company_name: str, channel: str = "cli") -> str:
        """Email the primary admin a link to manage the company; returns the link."""
        with self._transaction() as s:
            company = self._company_by_name(s, company_name)
            token = self._signer.sign(Purpose.MANAGE, ["company", company.id, company.admin_email])
            url = self._links.manage(token)
            self._notify_company_admin(
                s, company, "manage_link",
                {"url": url, "expires_at": self._now() + self._policy.manage_link_ttl}, auto=False,
            )
            self._event(s, "company.manage_link_sent", "operator", channel, company_id=company.id)
            return url

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
        payload = self._signer.verify(Purpose.MANAGE, token, max_age=self._policy.manage_link_ttl)
        try:
            kind, company_id, email = payload
        except (TypeError, ValueError):
            raise LinkTampered("link.invalid") from None
        if kind != "company" or not isinstance(company_id, int):
            raise LinkTampered("link.invalid")
        with self._sessions() as s:
            company = s.get(Company, company_id)
            if company is None:
                raise LinkTampered("link.no_company")
            if company.admin_email != email:
                raise NotAllowed("transfer.no_longer_primary_admin", email=email, company=company.name)
        return company_id, email

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
            invited = s.scalars(
                select(Invitation.email)
                .where(Invitation.company_id == company.id, Invitation.state == "pending")
                .order_by(Invitation.email)
            ).all()
            return CompanyAdminView(
                company_id=company.id,
                company=company.name,
                admin_email=company.admin_email,
                admin_name=company.admin_name,
                subscription=company.subscription,
                has_quickbooks_time=company.has_quickbooks_time,
                connected_firms=tuple(firms),
                pending_invitations=tuple(invited),
                trial_ends_at=company.trial_ends_at,
                payment_details_at=company.payment_details_at,
                locale=company.admin_locale,
                timezone=company.admin_timezone,
            )

    def payment_link(self, company_id: int) -> str | None:
        """The payment-details link, for a company on a direct-discount trial."""
        with self._sessions() as s:
            company = s.get(Company, company_id)
            if company is None or company.subscription != "direct-discount":
                return None
            return self._payment_url(company.id)
