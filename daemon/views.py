"""Read-only views the domain hands to adapters.

Adapters (web pages, CLI output, emails) get these plain values, never ORM
objects, so nothing outside the domain can lazy-load or change a row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


_new_object = object.__new__


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def named(address: str, name: str | None) -> str:
    """A person as pages name them: "Julie Roy (julie@roy.example)", or the address alone without a name."""
    return f"{name} ({address})" if name else address


@dataclass(frozen=True)
class FirmView:
    id: int
    name: str
    email: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UserView:
    id: int
    email: str
    name: str
    locale: str
    timezone: str
    firms: tuple[FirmView, ...] = field(default=())
    disabled_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "locale": self.locale,
            "timezone": self.timezone,
            "firms": [firm.name for firm in self.firms],
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
        }


@dataclass(frozen=True)
class CompanyView:
    id: int
    name: str
    kind: str
    admin_email: str
    admin_name: str
    admin_locale: str
    subscription: str
    has_quickbooks_time: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InvitationView:
    """An invitation as a link landing page needs it.

    ``status`` is the state as the person sees it now: a pending invitation
    past its expiry date is "expired" even before a sweep records that.
    """

    id: int
    company: str
    email: str
    invited_by: str
    state: str
    status: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    firm: str | None
    accepted_by: str | None
    accepted_by_email: str | None
    renewal_requested_at: datetime | None
    url: str | None = None  # only when freshly issued
    # The invited address's staff time zone, if it is a staff account (the signed-out page's dates).
    invited_timezone: str | None = None
    # The invitation email's delivery state (daemon.deliveries), where a listing reads it.
    delivery: str | None = None
    # The name of whoever sent it (``invited_by``), while they are still the company's primary admin: the
    # page names them as the email did, "Julie Roy (julie@…)"; None: the address alone.
    invited_by_name: str | None = None

    @classmethod
    def of_link(
        cls, *, id: int, company: str, email: str, invited_by: str, state: str, status: str, created_at: datetime,
        expires_at: datetime, decided_at: datetime | None, firm: str | None, accepted_by: str | None,
        accepted_by_email: str | None, renewal_requested_at: datetime | None, invited_timezone: str | None,
        invited_by_name: str | None = None,
    ) -> InvitationView:
        """The link page's view (no ``url``, no ``delivery``): what ``cls(...)`` gives, equal and hashed
        alike, without the frozen dataclass's ``__init__``, which sets each of the 17 fields through
        ``object.__setattr__`` (4-6 us a page, as long as the page's SQL statement takes in SQLite).
        tests/test_invitation_view.py holds it to ``__init__``'s instance, field by field."""
        view = _new_object(cls)
        view.__dict__.update(
            id=id, company=company, email=email, invited_by=invited_by, state=state, status=status,
            created_at=created_at, expires_at=expires_at, decided_at=decided_at, firm=firm, accepted_by=accepted_by,
            accepted_by_email=accepted_by_email, renewal_requested_at=renewal_requested_at, url=None,
            invited_timezone=invited_timezone, delivery=None, invited_by_name=invited_by_name,
        )
        return view

    # The link page's kept rendering is found by a key holding the view (``daemon.web.context.page``): it
    # is hashed and compared on every request. The generated methods build a tuple of the 17 fields
    # attribute by attribute, twice for ``==``; these compare the fields' values in one C call (a frozen
    # view holds its fields and nothing else), and hash the id, which equal views share (views of one
    # invitation in another state are told apart by ``==``). Defined here, ``dataclass`` keeps them.
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def inviter(self) -> str:
        """Who sent it, as pages name them: "Julie Roy (julie@roy.example)", as the invitation email does;
        the address alone once they are no longer the company's primary admin (or have no name)."""
        return named(self.invited_by, self.invited_by_name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company": self.company,
            "email": self.email,
            "invited_by": self.invited_by,
            "state": self.state,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "decided_at": _iso(self.decided_at),
            "firm": self.firm,
            "accepted_by": self.accepted_by_email,
            "delivery": self.delivery,
        }


@dataclass(frozen=True, init=False)
class ClientView:
    id: int
    firm: str
    name: str
    kind: str
    status: str
    billing: str
    company: str | None
    email: str | None
    phone: str | None
    connected_at: datetime | None
    products: tuple[str, ...] = ()
    trial_ends_at: datetime | None = None
    primary_admin: str | None = None

    def __init__(
        self, id: int, firm: str, name: str, kind: str, status: str, billing: str, company: str | None,
        email: str | None, phone: str | None, connected_at: datetime | None, products: tuple[str, ...] = (),
        trial_ends_at: datetime | None = None, primary_admin: str | None = None,
    ) -> None:
        # A roster streams 100k of these: the generated frozen __init__ (a call to
        # object.__setattr__ per field) took a third of the time of reading the rows.
        # Filling __dict__ at once is what it does, in one call; still frozen after.
        self.__dict__.update(
            id=id, firm=firm, name=name, kind=kind, status=status, billing=billing, company=company, email=email,
            phone=phone, connected_at=connected_at, products=products, trial_ends_at=trial_ends_at,
            primary_admin=primary_admin,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "firm": self.firm,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "billing": self.billing,
            "company": self.company,
            "email": self.email,
            "phone": self.phone,
            "connected_at": _iso(self.connected_at),
            "products": list(self.products),
            "trial_ends_at": _iso(self.trial_ends_at),
            "primary_admin": self.primary_admin,
        }
