"""Sample facts for every email, so `cabinet mail preview` can render any template.

One entry per email in ``templates/email/<locale>/``, with every variable its
templates use (rendering is strict: a variable missing here is an error, and
``tests/test_templates_override.py`` renders each email with its sample).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from daemon.errors import InvalidInput

_AT = datetime(2026, 3, 2, 14, 30, tzinfo=timezone.utc)
_LATER = datetime(2026, 4, 1, 14, 30, tzinfo=timezone.utc)
#: The moment a preview is read at: when the sample's facts happen, so its deadlines read "in 4 weeks"
#: as the email would when sent, not "8 months ago" once the wall clock has passed them.
SAMPLE_NOW = _AT
_URL = "https://cabinet.example/invitations/SAMPLE-TOKEN"
_MANAGE = {"manage_url": "https://cabinet.example/company/SAMPLE-TOKEN"}  # the next step, for the client admin
_ROSTER = {"roster_url": "https://cabinet.example/"}  # the firm's client list, for its staff

_COMPANY = {"company": "Boulangerie Roy"}
_FIRM = {"firm": "Tremblay CPA"}
_ADMIN = {"admin_name": "Olivia Roy", "admin_email": "olivia@boulangerie-roy.example"}
_ACCOUNTANT = {"accountant_name": "Marie Tremblay", "accountant_email": "marie@tremblay-cpa.example"}
_AUTHORISED = {"authorized_at": _AT, "authorized_by": "Olivia Roy", "expires_at": _LATER}

SAMPLES: dict[str, dict[str, Any]] = {
    "client_added": {**_ROSTER, **_COMPANY, **_FIRM, "accepted_at": _AT, "accepted_by": "Marie Tremblay",
                     "accepted_by_email": "marie@tremblay-cpa.example"},
    "client_setup": {**_COMPANY, **_FIRM, "url": _URL, "expires_at": _LATER},
    "client_setup_completed": {**_COMPANY, **_FIRM, **_ADMIN},
    "discount_lapsed_client": {**_COMPANY, "trial_ends_at": _AT},
    "discount_lapsed_firm": {**_ROSTER, **_COMPANY, **_FIRM, "trial_ends_at": _AT},
    "invitation": {**_COMPANY, **_ADMIN, "url": _URL, "expires_at": _LATER},
    "invitation_accepted": {**_COMPANY, **_FIRM, **_ACCOUNTANT, "accepted_at": _AT},
    "invitation_bounced": {**_MANAGE, **_COMPANY, "email": "marie@tremblay-cpa.example", "bounced_at": _AT,
                           "cause": "no_such_address", "status": "5.1.1"},
    "invitation_declined": {**_MANAGE, **_COMPANY, **_ACCOUNTANT},
    "invitation_expired": {**_MANAGE, **_COMPANY, "email": "marie@tremblay-cpa.example", "expired_at": _AT},
    "invitation_renewal_requested": {**_COMPANY, "email": "marie@tremblay-cpa.example", "expired_at": _AT,
                                     "url": _URL},
    "manage_link": {**_COMPANY, "url": _URL, "expires_at": _LATER},
    "account_setup": {**_COMPANY, "email": "marie@tremblay-cpa.example", "url": _URL, "expires_at": _LATER},
    "password_reset": {"email": "marie@tremblay-cpa.example", "url": _URL, "expires_at": _LATER},
    "payment_details_added": {**_COMPANY, **_FIRM},
    "payment_details_request": {**_COMPANY, "url": _URL, "trial_ends_at": _LATER},
    "reply_choose_firm": {**_COMPANY, "url": _URL, "firms": ["Gagnon & Associés", "Tremblay CPA"]},
    "reply_forwarded": {**_COMPANY, "sender": "olivia@boulangerie-roy.example", "received_at": _AT,
                        "subject": "Re: Invitation", "text": "Hello,\nCould you call me this week?\nOlivia"},
    "reply_needs_link": {**_COMPANY, "url": _URL, "action": "accept", "reason": "unverified"},
    "transfer_allowed": {**_COMPANY, **_FIRM, **_AUTHORISED, "url": _URL},
    "transfer_completed": {**_COMPANY, **_FIRM, "completed_at": _AT, "completed_by": "Marie Tremblay"},
    "transfer_declined": {**_MANAGE, **_COMPANY, **_FIRM, "declined_by": "Marie Tremblay"},
    "transfer_expired_client": {**_MANAGE, **_COMPANY, **_FIRM, **_AUTHORISED},
    "transfer_expired_firm": {**_COMPANY, **_FIRM, **_AUTHORISED},
    "transfer_reminder": {**_COMPANY, **_FIRM, **_AUTHORISED, "url": _URL},
    "transfer_revoked": {**_COMPANY, **_FIRM, "authorized_at": _AT, "authorized_by": "Olivia Roy"},
    "trial_reminder": {**_COMPANY, "url": _URL, "trial_ends_at": _LATER, "days_left": 3},
}


def sample_context(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sample facts for email ``name``, with ``overrides`` on top.

    An override given as text where the sample has a date (as JSON can only give
    text) is read as an ISO 8601 date, so ``|datetime`` still works.
    """
    context = dict(SAMPLES.get(name, {}))
    for key, value in (overrides or {}).items():
        if isinstance(context.get(key), datetime) and isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidInput("preview.bad_date", key=key, value=value) from None
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
        context[key] = value
    return context
