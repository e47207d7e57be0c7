"""What a Cabinet link is, for support: `cabinet link explain URL`.

Reads only. The token goes through the signer (its issue time) and the one
resolver from a token to its row (``DomainService._row_from_token``), so the
answer is what the link's page would see — without opening it, which for a
support person would be acting on someone else's behalf. What happened since
comes from the events table: a GET changes no state, but the first fetch of an
emailed link's page appends a ``link.opened`` event (daemon.link_opens), which
is shown here as "opened" (a mail scanner's fetch counts too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from daemon.deliveries import OPENED
from daemon.domain import DomainService
from daemon.errors import CabinetError, LinkTampered
from daemon.models import BillingTransfer, Company, Event, Invitation, SetupInvitation, User
from daemon.tokens import Purpose
from daemon.new_accounts import NEW_ACCOUNT_TTL
from daemon.password_resets import PASSWORD_RESET_TTL


@dataclass(frozen=True)
class _Route:
    purpose: Purpose
    model: type[Any]
    what: str  # as _row_from_token names it
    label: str  # what support reads
    tag: str | None = None
    bound: str | None = "nonce"


# The path of each emailed link (daemon.links.Links), to its purpose and row.
_ROUTES: list[tuple[re.Pattern[str], _Route]] = [
    (re.compile(r"^/invitations/renew/([^/]+)"), _Route(Purpose.MANAGE, Invitation, "invitation", "invitation renewal", tag="renew")),
    (re.compile(r"^/invitations/([^/]+)"), _Route(Purpose.INVITE, Invitation, "invitation", "invitation")),
    (re.compile(r"^/company/([^/]+)"), _Route(Purpose.MANAGE, Company, "company", "company management", tag="company", bound="admin_email")),
    (re.compile(r"^/transfers/([^/]+)"), _Route(Purpose.TRANSFER, BillingTransfer, "billing transfer", "billing transfer")),
    (re.compile(r"^/setup/([^/]+)"), _Route(Purpose.SETUP, SetupInvitation, "invitation", "client setup")),
    (re.compile(r"^/payment/([^/]+)"), _Route(Purpose.PAYMENT, Company, "trial", "payment details", bound=None)),
    (re.compile(r"^/accounts/new/([^/]+)"), _Route(Purpose.NEW_ACCOUNT, Invitation, "invitation", "account creation")),
    (re.compile(r"^/password-reset/([^/]+)"), _Route(Purpose.PASSWORD_RESET, User, "user", "password reset", bound="password_stamp")),
]

# Event kinds that mean the link was acted on (the first one after issue is "used").
_ACTED = {
    "invitation.accepted", "invitation.declined", "invitation.renewal_requested", "transfer.allowed",
    "transfer.completed", "transfer.declined", "client.setup_completed", "trial.payment_details_added",
    "staff.password_reset",
}


# The purpose a "link.opened" event records (daemon.link_opens) for each kind of link.
_OPENED_PURPOSE = {
    Purpose.INVITE: "invitation", Purpose.SETUP: "setup", Purpose.PAYMENT: "payment", Purpose.MANAGE: "manage",
    Purpose.TRANSFER: "transfer",
}


class _Replaced(LinkTampered):
    """The row exists but the link's bound value no longer matches it (replaced or reassigned)."""

    def __init__(self, row: Any) -> None:
        super().__init__("link.replaced")
        self.row = row


@dataclass(frozen=True)
class LinkEvent:
    at: datetime
    kind: str
    actor: str
    channel: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "kind": self.kind, "actor": self.actor, "channel": self.channel}


@dataclass(frozen=True)
class LinkExplanation:
    purpose: str
    row_id: int
    issued_to: str
    issued_at: datetime
    expires_at: datetime
    link_expired: bool
    current: bool  # False: a newer link replaced this one, or the address it was issued to changed
    state: str
    detail: dict[str, Any] = field(default_factory=dict)
    events: tuple[LinkEvent, ...] = ()

    @property
    def used(self) -> LinkEvent | None:
        return next((e for e in self.events if e.kind in _ACTED), None)

    def as_dict(self) -> dict[str, Any]:
        used = self.used
        return {
            "purpose": self.purpose,
            "id": self.row_id,
            "issued_to": self.issued_to,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "link_expired": self.link_expired,
            "current": self.current,
            "state": self.state,
            "detail": self.detail,
            "used": used.as_dict() if used else None,
            "events": [e.as_dict() for e in self.events],
        }


class LinkExplainer(DomainService):
    def _max_age(self, purpose: Purpose, tag: str | None) -> timedelta:
        policy = self._policy
        return {
            Purpose.INVITE: policy.invitation_ttl,
            Purpose.MANAGE: policy.invitation_ttl if tag == "renew" else policy.manage_link_ttl,
            Purpose.TRANSFER: policy.transfer_window,
            Purpose.SETUP: policy.setup_ttl,
            Purpose.PAYMENT: policy.trial_length + timedelta(days=1),
            Purpose.PASSWORD_RESET: PASSWORD_RESET_TTL,
            Purpose.NEW_ACCOUNT: NEW_ACCOUNT_TTL,
        }[purpose]

    def explain(self, url: str) -> LinkExplanation:
        """Raises ``LinkTampered`` for anything that is not a link Cabinet signed, or whose row is gone."""
        path = urlsplit(url.strip()).path
        for pattern, route in _ROUTES:
            match = pattern.match(path)
            if match:
                break
        else:
            raise LinkTampered("link.invalid")
        token = match.group(1)
        payload, issued_at = self._signer.inspect(route.purpose, token)
        max_age = self._max_age(route.purpose, route.tag)
        with self._sessions() as s:
            current = True
            try:
                row = self._row_from_token(
                    s, route.purpose, token, route.model, what=route.what, max_age=max_age, expired_ok=True,
                    tag=route.tag, bound=route.bound, mismatch=lambda row, _value: _Replaced(row),
                )
            except _Replaced as replaced:
                row, current = replaced.row, False
            issued_to, state, detail = self._describe(s, route, row, payload, issued_at)
            return LinkExplanation(
                purpose=route.label,
                row_id=row.id,
                issued_to=issued_to,
                issued_at=issued_at,
                expires_at=issued_at + max_age,
                link_expired=self._now() >= issued_at + max_age,
                current=current,
                state=state,
                detail=detail,
                events=tuple(self._events(s, route, row, issued_at)),
            )

    def _describe(
        self, s: Session, route: _Route, row: Any, payload: Any, issued_at: datetime
    ) -> tuple[str, str, dict[str, Any]]:
        now = self._now()
        if isinstance(row, Invitation):
            state = row.state
            if state == "pending" and now >= row.expires_at:
                state = "expired"
            to = row.company.admin_email if route.purpose is Purpose.MANAGE else row.email
            return to, state, {
                "company": row.company.name, "invitation_expires_at": row.expires_at.isoformat(),
                "firm": row.firm.name if row.firm else None,
                "accepted_by": row.accepted_by.email if row.accepted_by else None,
            }
        if isinstance(row, BillingTransfer):
            return row.company.admin_email, row.state, {
                "company": row.company.name, "firm": row.firm.name, "decided_by": row.decided_by,
                "transfer_expires_at": row.expires_at.isoformat(),
            }
        if isinstance(row, SetupInvitation):
            return row.email, row.state, {"company": row.company.name, "firm": row.firm.name}
        if isinstance(row, Company):
            if route.purpose is Purpose.PAYMENT:
                state = "payment details on file" if row.payment_details_at else "awaiting payment details"
                return row.admin_email, state, {
                    "company": row.name, "trial_ends_at": row.trial_ends_at.isoformat() if row.trial_ends_at else None,
                }
            to = str(payload[-1]) if isinstance(payload, list) and payload else row.admin_email
            return to, f"primary admin is {row.admin_email}", {"company": row.name}
        if isinstance(row, User):
            if row.disabled_at is not None:
                state = "account disabled"
            elif not isinstance(payload, list) or payload[-1] != row.password_stamp:
                state = "used (the password changed since)"
            else:
                state = "unused"
            return row.email, state, {}
        raise CabinetError("error.unexpected")  # pragma: no cover - every route names one of the above

    def _events(self, s: Session, route: _Route, row: Any, issued_at: datetime) -> list[LinkEvent]:
        # The token's time is whole seconds (earlier than or equal to its real issue): nothing after it is missed.
        query = select(Event).where(Event.at >= issued_at).order_by(Event.at, Event.id).limit(200)
        key: tuple[str, int] | None = None
        if isinstance(row, Invitation):
            query = query.where(Event.company_id == row.company_id, Event.kind.like("invitation.%"))
            key = ("invitation_id", row.id)
        elif isinstance(row, BillingTransfer):
            query = query.where(
                Event.company_id == row.company_id, Event.firm_id == row.firm_id, Event.kind.like("transfer.%")
            )
        elif isinstance(row, SetupInvitation):
            query = query.where(Event.company_id == row.company_id, Event.kind == "client.setup_completed")
        elif isinstance(row, Company):
            if route.purpose is Purpose.PAYMENT:
                query = query.where(Event.company_id == row.id, Event.kind.like("trial.%"))
            else:
                query = query.where(Event.company_id == row.id)
        elif isinstance(row, User):
            query = query.where(
                Event.firm_id.is_(None), Event.company_id.is_(None),
                or_(Event.kind == "staff.password_reset", Event.kind == "staff.password_set",
                    Event.kind == "staff.disabled"),
            )
        found = []
        for event in s.scalars(query):
            detail = _detail(event)
            if key is not None and detail.get(key[0]) not in (None, key[1]):
                continue
            if isinstance(row, User) and detail.get("email") != row.email:
                continue
            found.append(LinkEvent(event.at, event.kind, event.actor, event.channel))
        purpose = _OPENED_PURPOSE.get(route.purpose) if route.tag != "renew" else None
        company_id = row.id if isinstance(row, Company) else getattr(row, "company_id", None)
        if purpose is not None and company_id is not None:
            opened = select(Event).where(Event.kind == OPENED, Event.company_id == company_id, Event.at >= issued_at)
            for event in s.scalars(opened):
                detail = _detail(event)
                if detail.get("purpose") == purpose and detail.get("ref") == row.id:
                    found.append(LinkEvent(event.at, event.kind, event.actor, event.channel))
            found.sort(key=lambda e: e.at)
        return found


def _detail(event: Event) -> dict[str, Any]:
    try:
        value = json.loads(event.detail or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
