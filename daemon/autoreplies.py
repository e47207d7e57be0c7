"""Recognise automatic replies (RFC 3834 and the out-of-office habits of real clients).

An automatic reply is recorded and never acted on nor answered: answering one
is how two robots start a mail loop, and an out-of-office message that says
"accept" must not accept anything. The check leans towards "automatic": a
human reply wrongly taken for one is still recorded, only not acted on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.message import EmailMessage

# Out-of-office subjects in English and French, as Outlook, Gmail, Apple Mail,
# Zimbra and the French-Canadian Exchange locales write them. The short
# prefixes ("Auto:", "Absent:") only count at the start, where clients put
# them; the phrases are rare enough in business mail to match anywhere.
_SUBJECTS = re.compile(
    r"""
    ^\s*(?:auto|absente?)\s*:
    | \bauto(?:matic)?[\s-]*(?:reply|response)\b
    | \bout[\s-]+of[\s-]+(?:the[\s-]+)?office\b
    | \br[ée]ponse\s+automatique\b
    | \babsen(?:ce|te?)\s+du\s+bureau\b
    | \babsent\(e\)
    | \bje\s+suis\s+absente?\b
    | \bmessage\s+d'absence\b
    """,
    re.IGNORECASE | re.VERBOSE,
)
_LIST_HEADERS = ("List-Id", "List-Unsubscribe")


@dataclass(frozen=True)
class AutoReplyVerdict:
    auto: bool
    reason: str


def is_auto_reply(message: EmailMessage, mail_from: str) -> AutoReplyVerdict:
    """Say whether ``message`` (delivered with envelope sender ``mail_from``) was sent by a robot."""
    # RFC 5321 §4.5.5: a null reverse-path is what every robot (DSN, OOF) must use.
    if mail_from.strip() in ("", "<>"):
        return AutoReplyVerdict(True, "null sender")
    submitted = _header(message, "Auto-Submitted")
    # RFC 3834 §5: any value but "no" (parameters aside) marks an automatic message.
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return AutoReplyVerdict(True, f"Auto-Submitted: {submitted}")
    precedence = _header(message, "Precedence").lower()
    if precedence in ("bulk", "junk", "list"):
        return AutoReplyVerdict(True, f"Precedence: {precedence}")
    for name in ("X-Autoreply", "X-Autorespond"):
        if name in message:
            return AutoReplyVerdict(True, f"{name} present")
    # Exchange puts this on its own out-of-office replies so that nothing answers them back.
    suppress = {token.strip().lower() for token in _header(message, "X-Auto-Response-Suppress").split(",")}
    if suppress & {"all", "oof"}:
        return AutoReplyVerdict(True, "X-Auto-Response-Suppress: " + _header(message, "X-Auto-Response-Suppress"))
    for name in _LIST_HEADERS:
        if name in message:
            return AutoReplyVerdict(True, f"mailing list ({name})")
    subject = _header(message, "Subject")
    if _SUBJECTS.search(subject):
        return AutoReplyVerdict(True, f"out-of-office subject: {subject}")
    return AutoReplyVerdict(False, "no sign of an automatic reply")


def _header(message: EmailMessage, name: str) -> str:
    """The header's decoded text with spacing normalised ("" when absent).

    French clients put a no-break space before ":" and may send decomposed
    accents; NFKC folds both so one pattern fits every client.
    """
    value = message.get(name)
    if value is None:
        return ""
    return " ".join(unicodedata.normalize("NFKC", str(value)).replace("\u2019", "'").split())
