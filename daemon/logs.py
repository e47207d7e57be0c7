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

TOKEN = re.compile(
    r"(?P<prefix>/(?:invitations(?:/renew)?|company|transfers|setup|payment)/|(?:reply|bounce)\+)"
    r"(?P<token>[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-.]{10,}"
)


def redact(text: str) -> str:
    return TOKEN.sub(lambda m: f"{m.group('prefix')}{m.group('token')}…", text)


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
    # flufl.bounce logs each of its detectors' runs at INFO and a traceback for each that raises;
    # daemon.bounces reports what matters (an unreadable report is classified, not retried).
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
