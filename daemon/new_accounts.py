"""An accountant invited at an address with no Cabinet account creates one.

From the invitation page, "Create your account" emails the invited address a
single-use link (so only whoever reads that mailbox can use it). Its page sets
a name, a language, a password and the accountant's firm; the account becomes
that firm's admin, is signed in, and continues to the invitation to accept it.
A firm that already uses Cabinet is not joined this way: its admin adds the
person (`cabinet staff add` / `add-firm`). The link is spent once an account
exists for the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daemon.domain import DomainService, clean_name, name_key
from daemon.errors import AlreadyExists, InvalidState, LinkTampered
from daemon.i18n import check_locale
from daemon.models import Event, Firm, Invitation, InvitationState, Membership, User
from daemon.notices import Notice
from daemon.tokens import Purpose
from daemon.views import UserView

NEW_ACCOUNT_TTL = timedelta(hours=24)
OFFERS_PER_HOUR = 3
OFFERED = "account.link_sent"


@dataclass(frozen=True)
class NewAccountInvitation:
    email: str
    company: str
    invitation_url: str  # the invitation's own link, to continue to once the account exists


class NewAccounts(DomainService):
    def _pending(self, s: Session, invitation: Invitation) -> None:
        if invitation.state != InvitationState.PENDING or self._now() >= invitation.expires_at:
            raise InvalidState("invitation.unavailable", status=invitation.state)

    def offer(self, invite_token: str) -> None:
        """Email the invited address a link to create its account (nothing if it has one, or too many went)."""
        now = self._now()
        with self._transaction() as s:
            invitation = self._row_from_token(
                s, Purpose.INVITE, invite_token, Invitation, what="invitation", max_age=self._policy.invitation_ttl
            )
            self._pending(s, invitation)
            if s.scalar(select(User.id).where(User.email == invitation.email)) is not None:
                return
            recent = s.scalar(
                select(func.count(Event.id)).where(
                    Event.kind == OFFERED, Event.actor == invitation.email, Event.at > now - timedelta(hours=1)
                )
            )
            if (recent or 0) >= OFFERS_PER_HOUR:
                return
            company = invitation.company
            token = self._signer.sign(Purpose.NEW_ACCOUNT, [invitation.id, invitation.nonce])
            self._notifier.queue(
                s,
                Notice(
                    template="account_setup",
                    to=invitation.email,
                    to_name="",
                    locale=company.admin_locale,
                    timezone=company.admin_timezone,
                    context={
                        "email": invitation.email, "company": company.name, "url": self._links.new_account(token),
                        "expires_at": now + NEW_ACCOUNT_TTL,
                    },
                    invitation_id=invitation.id,
                    company_id=company.id,
                ),
            )
            self._event(s, OFFERED, invitation.email, "link", company_id=company.id, invitation_id=invitation.id,
                        email=invitation.email)

    def _invitation(self, s: Session, token: str) -> Invitation:
        invitation = self._row_from_token(
            s, Purpose.NEW_ACCOUNT, token, Invitation, what="invitation", max_age=NEW_ACCOUNT_TTL
        )
        if s.scalar(select(User.id).where(User.email == invitation.email)) is not None:
            raise LinkTampered("link.used")
        return invitation

    def _view(self, invitation: Invitation) -> NewAccountInvitation:
        url = self._links.invitation(self._signer.sign(Purpose.INVITE, [invitation.id, invitation.nonce]))
        return NewAccountInvitation(invitation.email, invitation.company.name, url)

    def open(self, token: str) -> NewAccountInvitation:
        with self._sessions() as s:
            return self._view(self._invitation(s, token))

    def create(
        self, token: str, name: str, locale: str, firm_name: str, password_hash: str
    ) -> tuple[UserView, NewAccountInvitation]:
        """The account, admin of a new firm, for the invited address; the password is hashed by the caller."""
        name = clean_name(name)
        firm_name = clean_name(firm_name)
        locale = check_locale(locale)
        now = self._now()
        with self._transaction() as s:
            invitation = self._invitation(s, token)
            address = invitation.email
            if s.scalar(select(Firm.id).where(Firm.name_key == name_key(firm_name))) is not None:
                raise AlreadyExists("account.firm_exists", name=firm_name)
            firm = Firm(name=firm_name, name_key=name_key(firm_name), email=address, created_at=now)
            user = User(
                email=address, name=name, password_hash=password_hash, locale=locale,
                timezone=invitation.company.admin_timezone or self._policy.default_timezone, created_at=now,
            )
            s.add_all([firm, user])
            try:
                with s.begin_nested():
                    s.flush()
            except IntegrityError:
                raise LinkTampered("link.used") from None  # the same link pressed twice at once: one account
            s.add(Membership(user_id=user.id, firm_id=firm.id, role="admin"))
            self._event(s, "firm.added", address, "link", firm_id=firm.id, name=firm.name)
            self._event(s, "staff.added", address, "link", firm_id=firm.id, email=address)
            s.flush()
            return self._user_view(s, user), self._view(invitation)
