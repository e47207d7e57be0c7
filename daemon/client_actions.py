"""What staff do to a client already on the roster: edit its contact details, resend its setup or
payment link, withdraw an invitation its company sent.

One place for the rules, called by the client page (a signed-in member of the
client's firm) and by `cabinet client edit` / `client resend-link` (the
operator). Every write checks what it replaces, so two people editing at once
cannot silently overwrite each other.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from daemon.db import rows_changed
from daemon.domain import DomainContext, DomainService, client_view, name_key, normalise_email
from daemon.errors import InvalidState, NotFound
from daemon.models import Client, ClientStatus, Company, Firm, SetupInvitation, SetupState
from daemon.onboarding import Onboarding
from daemon.roster import Roster
from daemon.tokens import Purpose
from daemon.views import ClientView, InvitationView

MAX_PHONE = 50


def clean_phone(phone: str | None) -> str | None:
    """A phone number as typed, spaces collapsed; None for an empty one."""
    cleaned = " ".join((phone or "").split())[:MAX_PHONE]
    return cleaned or None


def awaits_payment(client: Client, company: Company) -> bool:
    """A direct-discount trial without payment details: its payment link may be resent."""
    return (company.subscription == "direct-discount" and company.payment_details_at is None
            and client.status == ClientStatus.TRIAL)


class ClientActions(DomainService):
    def __init__(self, ctx: DomainContext, onboarding: Onboarding, roster: Roster) -> None:
        super().__init__(ctx)
        self._onboarding = onboarding
        self._roster = roster

    def find(self, firm_name: str, client_name: str) -> int:
        """A client's id from its firm's and its own name (the CLI names clients)."""
        with self._sessions() as s:
            firm = self._firm_by_name(s, firm_name)
            found = s.scalar(select(Client.id).where(Client.firm_id == firm.id, Client.name_key == name_key(client_name)))
            if found is None:
                raise NotFound("client.not_found", firm=firm.name, name=client_name)
            return int(found)

    def _client(self, s: Session, client_id: int, user_id: int | None) -> Client:
        """The client, if ``user_id`` (None: the operator) is a member of its firm; "not found" otherwise,
        as the client page answers for another firm's client."""
        client = s.get(Client, client_id)
        if client is None or (user_id is not None and not self._is_member(s, user_id, client.firm_id)):
            raise NotFound("client.missing")
        return client

    def _pending_setup(self, s: Session, client: Client) -> SetupInvitation | None:
        if client.company_id is None:
            return None
        return s.scalar(
            select(SetupInvitation).where(
                SetupInvitation.company_id == client.company_id, SetupInvitation.firm_id == client.firm_id,
                SetupInvitation.state == SetupState.PENDING,
            ).order_by(SetupInvitation.id.desc()).limit(1)
        )

    def edit_contact(
        self, client_id: int, email: str | None, phone: str | None, actor: str, channel: str,
        user_id: int | None = None,
    ) -> ClientView:
        """Change the client's email and phone: None leaves one as it is, "" clears it.

        While the client has not yet become primary admin, its company's admin is
        the contact the setup invitation went to: a corrected address moves the
        invitation too (resend it to send the new address the link).
        """
        with self._transaction() as s:
            client = self._client(s, client_id, user_id)
            before = (client.email, client.phone)
            if email is None:
                address = client.email
            else:
                address = normalise_email(email) if email.strip() else None
            number = client.phone if phone is None else clean_phone(phone)
            if before == (address, number):
                return client_view(client, s.get_one(Firm, client.firm_id))
            guard = [Client.id == client.id]
            guard += [Client.email.is_(None) if client.email is None else Client.email == client.email]
            guard += [Client.phone.is_(None) if client.phone is None else Client.phone == client.phone]
            if not rows_changed(s, update(Client).where(*guard).values(email=address, phone=number)):
                raise InvalidState("client.changed_meanwhile", name=client.name)
            setup = self._pending_setup(s, client)
            if setup is not None and address is not None and address != setup.email:
                company = s.get_one(Company, setup.company_id)
                if company.admin_email == setup.email:
                    moved = rows_changed(s, update(Company).where(
                        Company.id == company.id, Company.admin_email == setup.email).values(admin_email=address))
                    moved += rows_changed(s, update(SetupInvitation).where(
                        SetupInvitation.id == setup.id, SetupInvitation.email == setup.email,
                        SetupInvitation.state == SetupState.PENDING).values(email=address))
                    if moved != 2:
                        raise InvalidState("client.changed_meanwhile", name=client.name)
            self._event(s, "client.contact_changed", actor, channel, firm_id=client.firm_id,
                        company_id=client.company_id, client_id=client.id,
                        email=[before[0], address], phone=[before[1], number])
            s.flush()
            s.refresh(client)
            return client_view(client, s.get_one(Firm, client.firm_id))

    def resend_link(self, client_id: int, which: str, actor: str, channel: str, user_id: int | None = None) -> str:
        """Email the client its setup link (``which`` "setup": while it has not become primary admin) or its
        payment link ("payment": a direct-discount trial without payment details). Returns ``which``.

        A resent setup link is a new one, valid the whole setup period again; the
        previous link stops working (its nonce changes), so only the latest email works.
        """
        with self._transaction() as s:
            client = self._client(s, client_id, user_id)
            company = s.get(Company, client.company_id) if client.company_id is not None else None
            setup = self._pending_setup(s, client)
            if which == "setup" and company is not None and setup is not None:
                nonce = self._signer.nonce()
                expires_at = self._now() + self._policy.setup_ttl
                if not rows_changed(s, update(SetupInvitation).where(
                    SetupInvitation.id == setup.id, SetupInvitation.nonce == setup.nonce,
                    SetupInvitation.state == SetupState.PENDING,
                ).values(nonce=nonce, expires_at=expires_at)):
                    raise InvalidState("client.changed_meanwhile", name=client.name)
                firm = s.get_one(Firm, client.firm_id)
                url = self._links.setup(self._signer.sign(Purpose.SETUP, [setup.id, nonce]))
                self._notify_company_admin(
                    s, company, "client_setup", {"firm": firm.name, "url": url, "expires_at": expires_at},
                    auto=False, firm_id=firm.id,
                )
            elif which == "payment" and company is not None and awaits_payment(client, company):
                self._onboarding.queue_payment_notice(s, company, client)
            elif which == "payment":
                raise InvalidState("client.no_payment_link", name=client.name)
            else:
                raise InvalidState("client.no_setup_link", name=client.name)
            self._event(s, f"client.{which}_link_resent", actor, channel, firm_id=client.firm_id,
                        company_id=client.company_id, client_id=client.id)
            return which

    def withdraw_invitation(
        self, client_id: int, invitation_id: int, actor: str, channel: str, user_id: int | None = None
    ) -> InvitationView:
        """Withdraw an invitation the client's company sent (as `cabinet invitation revoke` does)."""
        with self._sessions() as s:
            company_id = self._client(s, client_id, user_id).company_id
        if company_id is None:
            raise NotFound("invitation.not_found", id=invitation_id)
        return self._roster.revoke_invitation(invitation_id, channel, company_id=company_id, actor=actor)
