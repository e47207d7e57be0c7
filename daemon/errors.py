"""Cabinet's own error hierarchy.

The domain raises these; each adapter maps them once, at its edge: HTTP
statuses and pages in ``daemon.web``, exit codes in ``daemon.cli``, SMTP
replies in ``daemon.smtp``.
"""

from __future__ import annotations


class CabinetError(Exception):
    """Base of every error Cabinet reports to a person."""

    #: HTTP status an adapter uses when it has no better page for this error.
    http_status = 400


class ConfigError(CabinetError):
    """The configuration is missing, malformed or contradictory."""


class NotFound(CabinetError):
    """A named thing (firm, company, staff member, invitation) does not exist."""

    http_status = 404


class AlreadyExists(CabinetError):
    """Creating something that exists already; the message names the existing entry."""

    http_status = 409


class InvalidInput(CabinetError):
    """Input that breaks a rule: bad address, unknown kind, missing field."""


class NotAllowed(CabinetError):
    """The rules forbid this action for this person (the message says which rule)."""

    http_status = 403


class InvalidState(CabinetError):
    """The thing is no longer in a state where this action applies.

    ``current`` is what the thing is now (its state, or a view of it) when the domain knows.
    """

    http_status = 409

    def __init__(self, message: str = "", *args: object, current: object = None) -> None:
        super().__init__(message, *args)
        self.current = current


class AuthenticationFailed(CabinetError):
    """Email and password do not match a staff account."""

    http_status = 401


class LinkError(CabinetError):
    """A signed link could not be used."""

    http_status = 404


class LinkTampered(LinkError):
    """The signature does not verify: forged, truncated or for another purpose."""


class LinkExpired(LinkError):
    """The signature is valid but older than the purpose's maximum age."""

    http_status = 410

    def __init__(self, message: str, payload: object) -> None:
        super().__init__(message)
        self.payload = payload


class LimitReached(CabinetError):
    """Too many of something in too short a time; ``retry_after`` says when it may work again."""

    http_status = 429

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(CabinetError):
    """A bounded resource is full; the request was refused rather than queued."""

    http_status = 503
