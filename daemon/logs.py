"""Logging for `cabinet serve`: to stdout, as text or one JSON object per line.

Link tokens and reply/bounce references are secrets (whoever holds one can
act): the filter here shortens them in every record, whoever logged it
(Cabinet, aiohttp's access log, aiosmtpd).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

# A token is everything after its prefix up to the next character no token uses. Any length
# counts: a payment token for company 5 starts "WzVd." (4 characters, then a dot), and a
# shorter-looking token is still a credential. Prefixes are matched percent-encoded too, as
# they appear inside a logged `next=` query string, and in any case.
#
# At INFO this runs on every access line, and it was 44k of a line's 110k instructions: tried at
# every position of the line, each try went through the case-insensitive alternatives. So the
# search first asks for a character a prefix can start with (a plain class: no case folding), and
# only the prefix is case-insensitive; the token's class lists what case folding added to it (the
# dotted and dotless i, the long s and the Kelvin sign), so it matches exactly what it did
# (tests/test_log_redaction.py holds it to the plain case-insensitive pattern).
TOKEN = re.compile(
    r"(?=[/%rRbB])"
    r"(?P<prefix>(?i:(?:/|%2F)(?:invitations(?:/|%2F)renew|invitations|company|transfers|setup|payment)(?:/|%2F)"
    r"|(?:reply|bounce)\+))"
    r"(?P<token>[A-Za-z0-9_\-.\u0130\u0131\u017f\u212a]+)"
)
KEEP = 6  # characters shown, enough to tell two tokens apart in a log, far too few to use


def _shorten(match: re.Match[str]) -> str:
    token = match.group("token")
    if token.lower() in ("renew", "renew%2f"):
        return match.group(0)
    return f"{match.group('prefix')}{token[: min(KEEP, len(token) // 4)]}…"


def redact(text: str) -> str:
    return TOKEN.sub(_shorten, text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RedactTokens())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format shows a record's process, thread, multiprocessing name or caller (file, line,
    # function), so no record looks them up (the knobs of the logging HOWTO's "Optimization"): at INFO the
    # access log makes a record per request. The ids cost an ``os.getpid()`` (a syscall: glibc does not
    # cache it) and two lookups, 3.1k of a line's 130k instructions; the caller, a walk up the stack
    # (``findCaller``), 16.7k more.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    # flufl.bounce logs each of its detectors' runs at INFO and a traceback for each that raises;
    # daemon.bounces reports what matters (an unreadable report is classified, not retried).
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
