"""Cabinet's own error hierarchy: a code and its parameters, never prose for users.

The domain raises ``InvalidInput("payroll.requires_wholesale")`` or
``NotFound("firm.not_found", name=...)``. ``str(error)`` is an English
rendering from ``MESSAGES`` for the CLI and the logs; pages and emails
translate ``error.code`` in the reader's language through the gettext
catalogue (``templates/web/locale``), where each code is a message context
(``msgctxt``) whose ``msgid`` is the English text below (a code whose words
follow a number, in ``PLURALS``, is a plural entry: ``msgid`` the singular,
``msgid_plural`` the text below). Each adapter maps
errors once, at its edge: HTTP statuses and pages in ``daemon.web``, exit
codes in ``daemon.cli``, SMTP replies in ``daemon.smtp``.
"""

from __future__ import annotations

from typing import Any, Protocol

#: Every code a user can meet, with its English text (``str.format`` fields from the parameters).
#: This is the registry: tests check that the French catalogue has each code.
MESSAGES: dict[str, str] = {
    "error.unexpected": "this could not be done",
    "job.failure_not_found": "no failed {job} row {ref} (see `cabinet jobs list --failed`)",
    "job.unknown": "unknown job '{job}': one of {choices}",
    "signin.busy": 'the server is busy checking other sign-ins; try again in a moment',
    "signin.locked_address": "Sign-in for this address is locked after too many failed attempts. Try again in {minutes} minutes, or ask your firm's admin for help",
    "signin.locked_network": "Sign-in for your network address is locked after too many failed attempts. Try again in {minutes} minutes, or ask your firm's admin for help",
    "signin.wait": 'Too many failed sign-in attempts. Wait {seconds} seconds and try again',
    "manage_link.wait": "Too many requests for a manage link from this address or network. Try again in {minutes} minutes",
    "invite.daily_limit": '{company} has already sent {limit} invitations from a manage link in the last 24 hours, the most allowed. Try again tomorrow, or ask your accounting firm to send this one',
    "invitation.sent_concurrently": 'another invitation to {email} was sent at the same moment',
    "invitation.sign_in_add_client": 'sign in to add a client',
    "firm.none_yet": 'there is no firm yet (see `cabinet firm add`)',
    "outbox.id_required": "give an email's id (see `cabinet mail list`) or its Message-ID",
    "outbox.not_found": 'no message {id} in the outbox (see `cabinet mail list`)',
    "outbox.state_unknown": "unknown state '{state}'; one of {choices}",
    "outbox.not_retryable": 'email {id} is {state}; only a failed or queued email can be retried',
    "outbox.invitation_bounced": "email {id} is an invitation that was marked bounced and its inviter told; send a new invitation instead (`cabinet invitation send`)",
    "preview.bad_date": "{key} must be a date like 2026-03-02T14:30:00+00:00, got '{value}'",
    # Input
    "email.invalid": "'{address}' is not a valid email address",
    "name.empty": "a name cannot be empty",
    "name.unsafe_character": "a name cannot contain {character} (line breaks, control characters and text-direction overrides are refused)",
    "name.too_long": "a name can have at most 200 characters",
    "password.too_short": "a password needs at least {minimum} characters",
    "password.current_wrong": "the current password is incorrect",
    "password.mismatch": "the new password and its confirmation differ",
    "password.changed_meanwhile": "the password was changed meanwhile; sign in again",
    "locale.unknown": "language must be one of {choices}; got '{locale}'",
    "timezone.unknown": "unknown time zone '{timezone}' (use a name like America/Toronto)",
    "kind.unknown": "kind must be business or individual, got '{kind}'",
    "billing.unknown": "billing must be wholesale, direct or none, got '{billing}'",
    "product.unknown": "unknown product '{product}' (see `cabinet product list`)",
    "products.none_for_no_subscription": "a client with no subscription has no products",
    "products.one_quickbooks": "choose one QuickBooks product for the client's subscription",
    "products.one_payroll": "choose at most one Payroll product",
    "payroll.requires_wholesale": "a client who needs payroll must be on the wholesale billing plan",
    "client.no_subscription_no_admin": "a client with no subscription has no company, so no primary admin",
    "client.email_or_admin": "give the client's email (they will be invited to be primary admin), "
    "or make yourself the primary admin",
    "staff.needs_firm": "a staff member belongs to at least one firm (--firm)",
    "firm.choose": "choose a firm from the list",
    "firm.choose_for_client": "you belong to several firms: choose the firm to connect this client to",
    "invitation.choose": "choose the invitation to withdraw",
    "firm.choose_for_transfer": "choose the firm to transfer billing to",
    # Not found
    "firm.not_found": "no firm named '{name}' (see `cabinet firm list`)",
    "firm.missing": "no such firm",
    "company.not_found": "no company named '{name}' (see `cabinet company list`)",
    "company.missing": "no such company",
    "client.not_found": "{firm} has no client named '{name}'",
    "client.missing": "no such client",
    "company_or_firm.missing": "no such company or firm",
    "staff.not_found": "no staff member with the address '{email}' (see `cabinet staff list`)",
    "staff.missing": "no such staff member",
    "staff.not_member": "{email} is not a member of {firm}",
    "invitation.not_found": "no invitation {id} (see `cabinet invitation list`)",
    "inbound.not_found": "no inbound message {id} (see `cabinet inbound list`)",
    "mail.not_found": "no message '{key}' in {path}",
    # Already exists
    "firm.exists": "a firm named '{name}' already exists",
    "staff.exists": "a staff member with the address {email} already exists",
    "account.firm_exists": "a firm named '{name}' already uses Cabinet: ask its administrator to add you, "
    "then open your invitation again",
    "staff.already_member": "{email} is already a member of {firm}",
    "company.exists": "a company named '{name}' already exists",
    "company.exists_invite_admin": "a QuickBooks company named '{name}' already exists; "
    "invite its admin to connect it instead",
    "client.changed_meanwhile": "{name}'s details were changed meanwhile; look at them again",
    "client.no_setup_link": "{name} has no setup link waiting: the client is already primary admin, or has no subscription",
    "client.no_payment_link": "{name} has no payment link waiting: only a direct-discount trial without payment details has one",
    "client.exists": "{firm} already has a client named '{name}' on its roster",
    "client.exists_other_company": "{firm}'s roster already has a client named '{name}' for another company",
    # Not allowed
    "firm.not_member_add_client": "only a member of {firm} can add clients to its roster",
    "firm.not_member_primary_admin": "only a member of {firm} can be made primary admin by this firm",
    "firm.not_member_connect": "you can only connect a client to a firm you belong to",
    "firm.not_member_transfer": "only a member of {firm} can act on this billing transfer",
    "staff.no_firm": "{email} is not a member of any firm",
    "invitation.sign_in_accept": "sign in to accept this invitation",
    "invitation.sign_in_decline": "sign in to decline this invitation",
    "invitation.wrong_account": "this invitation was sent to {invited}, but you are signed in as {signed_in}",
    "transfer.not_primary_admin": "only the company's primary admin can allow a billing transfer",
    "transfer.no_longer_primary_admin": "only the company's primary admin can allow a billing transfer; "
    "{email} is no longer the primary admin of {company}",
    "transfer.refused": "billing transfer to {firm} is not possible: {reasons}",
    # Why a billing transfer is not possible (``reasons`` parameters are tuples of these codes).
    "transfer.reason.quickbooks_time": "QuickBooks Time is attached to this subscription, and a company with "
    "QuickBooks Time cannot be added to a wholesale billing plan",
    "transfer.reason.not_connected": "this firm is not connected to the company (invite its accountant first)",
    "transfer.reason.already_wholesale": "the company is already on this firm's wholesale billing plan",
    "transfer.reason.not_primary_admin": "only the company's primary admin can allow a billing transfer",
    # State
    "invitation.unavailable": "this invitation is {status}",
    "invitation.already_accepted": "this invitation was already accepted",
    "transfer.nothing_to_revoke": "there is no pending billing transfer to revoke",
    "payment.on_file": "payment details are already on file",
    "payment.lapsed": "the trial has ended and the discount has lapsed",
    "staff.last_firm": "{firm} is the only firm of {email}: a staff member belongs to at least one firm "
    "(add another firm first, or disable the account)",
    "staff.already_disabled": "the account {email} is already disabled",
    "link.used": "this link has already been used",
    "link.replaced": "this link was replaced by a newer one, or the address it was sent to changed",
    "inbound.not_retryable": "inbound message {id} is {state}; only a quarantined one can be retried",
    # Links and forms
    "link.invalid": "this link is not valid",
    "link.expired": "this link has expired",
    "link.no_invitation": "this link does not match any invitation",
    "link.no_trial": "this link does not match any trial",
    "link.no_transfer": "this link does not match any billing transfer",
    "link.no_company": "this link does not match any company",
    "address.not_ours": "this address is not one of ours",
    "csrf.expired": "this form has expired or did not come from this site; reload the page and try again",
    "csrf.other_browser": "this form did not come from this browser; reload the page and try again",
    "auth.failed": "the email or password is incorrect",
    "password.not_same": "the two passwords are not the same",
}


#: The codes whose words follow a number ("1 minute", "2 minutes"; in French "1 minute", "2 minutes",
#: and "0 minute"): the parameter that counts, and the English singular (``MESSAGES`` has the plural).
#: Written out, not "minute(s)": a person reads one form, the right one. Their French is a plural entry
#: of fr.po (``npgettext``: French takes the singular for 0 and 1).
PLURALS: dict[str, tuple[str, str]] = {
    "signin.locked_address": ("minutes", "Sign-in for this address is locked after too many failed attempts. Try again in {minutes} minute, or ask your firm's admin for help"),
    "signin.locked_network": ("minutes", "Sign-in for your network address is locked after too many failed attempts. Try again in {minutes} minute, or ask your firm's admin for help"),
    "signin.wait": ("seconds", "Too many failed sign-in attempts. Wait {seconds} second and try again"),
    "manage_link.wait": ("minutes", "Too many requests for a manage link from this address or network. Try again in {minutes} minute"),
}


class Catalogue(Protocol):
    """A reader's language: gettext's translations (``gettext.NullTranslations`` and babel's)."""

    def pgettext(self, context: str, message: str, /) -> str: ...

    def npgettext(self, context: str, singular: str, plural: str, n: int, /) -> str: ...


def _words(code: str, english: str, params: dict[str, Any], catalogue: Catalogue | None) -> tuple[str, str]:
    """The code's text in the reader's language (``catalogue``, or English), and its English; for a code
    of ``PLURALS``, both in the number's form."""
    plural = PLURALS.get(code)
    if plural is None:
        return (catalogue.pgettext(code, english) if catalogue else english), english
    counted, singular = plural
    count = params.get(counted)
    n = count if isinstance(count, int) else 2  # words for the number ("a few"): the plural's form
    text = singular if n == 1 else english
    return (catalogue.npgettext(code, singular, english, n) if catalogue else text), text


def render(code: str, params: dict[str, Any], catalogue: Catalogue | None = None) -> str:
    """A code's text: English from ``MESSAGES`` (the CLI's and the logs' wording), or from ``catalogue``
    (gettext's ``pgettext``, ``npgettext`` for ``PLURALS``) for a reader's language.

    A tuple parameter holds codes (a transfer's reasons): each is rendered the same way and joined.
    """
    english = MESSAGES.get(code)
    if english is None:
        return code
    text, english = _words(code, english, params, catalogue)
    values = {
        key: "; ".join(render(item, {}, catalogue) for item in value) if isinstance(value, tuple) else value
        for key, value in params.items()
    }
    try:
        return text.format(**values)
    except (KeyError, IndexError, ValueError):
        return english.format(**values)


class CabinetError(Exception):
    """Base of every error Cabinet reports to a person: a code from ``MESSAGES`` and its parameters."""

    #: HTTP status an adapter uses when it has no better page for this error.
    http_status = 400

    def __init__(self, code: str, /, **params: Any) -> None:
        if code not in MESSAGES:
            # Prose instead of a code (a caller not yet converted): keep it for the logs, and let
            # pages show the generic translated message rather than untranslated text.
            params = {"detail": code}
            code = "error.unexpected"
            message = params["detail"]
        else:
            message = render(code, params)
        super().__init__(message)
        self.code = code
        self.params = params


class ConfigError(CabinetError):
    """The configuration is missing, malformed or contradictory (operator-facing English, never on a page)."""

    def __init__(self, message: str, /, **params: Any) -> None:
        Exception.__init__(self, message)
        self.code = "error.unexpected"
        self.params = {"detail": message}


class NotFound(CabinetError):
    """A named thing (firm, company, staff member, invitation) does not exist."""

    http_status = 404


class AlreadyExists(CabinetError):
    """Creating something that exists already; the parameters name the existing entry."""

    http_status = 409


class InvalidInput(CabinetError):
    """Input that breaks a rule: bad address, unknown kind, missing field."""


class NotAllowed(CabinetError):
    """The rules forbid this action for this person (the code says which rule)."""

    http_status = 403


class InvalidState(CabinetError):
    """The thing is no longer in a state where this action applies.

    ``current`` is what the thing is now (its state, or a view of it) when the domain knows.
    """

    http_status = 409

    def __init__(self, code: str = "error.unexpected", /, current: object = None, **params: Any) -> None:
        super().__init__(code, **params)
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

    def __init__(self, code: str, payload: object, /, **params: Any) -> None:
        super().__init__(code, **params)
        self.payload = payload


class LimitReached(CabinetError):
    """Too many of something in too short a time; ``retry_after`` says when it may work again."""

    http_status = 429

    def __init__(self, code: str, /, retry_after: int | None = None, **params: Any) -> None:
        super().__init__(code, **params)
        self.retry_after = retry_after


class Busy(CabinetError):
    """A bounded resource is full; the request was refused rather than queued."""

    http_status = 503
