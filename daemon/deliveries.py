"""Did they get it? An email's delivery state, as staff and `cabinet invitation list --json` read it.

queued (in the outbox), sent (the relay accepted it), failed (gave up), bounced
(a bounce came back; the reason is the email's), then, for an email carrying a
link: opened (its link's page was fetched after the email went out) and acted on
(the link's action was taken). "opened" comes from the append-only
``link.opened`` events (see daemon.link_opens); "acted on" from the events
each action already records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

# The link each kind of email carries, by the purpose recorded with its "link.opened" events.
LINK_OF_EMAIL = {
    "invitation": "invitation",
    "client_setup": "setup",
    "payment_details_request": "payment",
    "trial_reminder": "payment",
    "manage_link": "manage",
    "transfer_allowed": "transfer",
    "transfer_reminder": "transfer",
}

# The events that mean a link of that purpose was acted on.
ACTED = {
    "invitation": ("invitation.accepted", "invitation.declined", "invitation.renewal_requested"),
    "setup": ("client.setup_completed",),
    "payment": ("trial.payment_details_added",),
    "transfer": ("transfer.completed", "transfer.declined"),
}
OPENED = "link.opened"
#: Every event kind delivery states are read from (for the statement that fetches them).
KINDS = (OPENED, *(kind for kinds in ACTED.values() for kind in kinds))


@dataclass(frozen=True)
class LinkFact:
    """An event that may open or act on an email's link."""

    at: datetime
    kind: str
    firm_id: int | None
    detail: dict[str, Any]


def parse_detail(detail: str | None) -> dict[str, Any]:
    try:
        value = json.loads(detail or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def outbox_state(state: str) -> str:
    """The outbox's own state as staff read it: "pending" is still queued."""
    return "queued" if state == "pending" else state


def delivery(
    state: str, email_kind: str, created_at: datetime, facts: Iterable[LinkFact],
    invitation_id: int | None = None, firm_id: int | None = None,
) -> str:
    """The email's delivery state: the outbox's, then "opened" / "acted" once its link was.

    ``facts`` are the events about the email's company (any order). A bounce or a
    failure stays what it is: a link acted on despite it came by another way.
    """
    plain = outbox_state(state)
    purpose = LINK_OF_EMAIL.get(email_kind)
    if plain != "sent" or purpose is None:
        return plain
    opened = acted = False
    for fact in facts:
        if fact.at < created_at:
            continue
        if invitation_id is not None and fact.detail.get("invitation_id", fact.detail.get("ref")) not in (
            None, invitation_id
        ):
            continue
        if purpose in ("setup", "transfer") and firm_id is not None and fact.firm_id not in (None, firm_id):
            continue
        if fact.kind == OPENED and fact.detail.get("purpose") == purpose:
            opened = True
        elif fact.kind in ACTED.get(purpose, ()):
            acted = True
    return "acted" if acted else "opened" if opened else "sent"
