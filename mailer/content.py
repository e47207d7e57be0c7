"""What an outbox row says to render, as JSON: the notice's template, language, zone and facts.

The domain's facts are plain values plus datetimes (deadlines, "now"); they are
tagged so the worker gets back exactly what the transaction saw. Anything else
is refused at queue time, inside the transaction, so a fact that cannot be
stored fails the change instead of an email later.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from daemon.clock import utc_isoformat


def _tagged(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": utc_isoformat(value)}  # value.isoformat(), from digit tables
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"an email fact of type {type(value).__name__} cannot be queued")


def _untagged(value: dict[str, Any]) -> Any:
    if len(value) == 1:
        ((key, text),) = value.items()
        if key == "$datetime":
            return datetime.fromisoformat(text)
        if key == "$date":
            return date.fromisoformat(text)
        if key == "$decimal":
            return Decimal(text)
    return value


# What ``json.dumps(content, default=_tagged, ensure_ascii=False, separators=(",", ":"))`` builds on every call,
# built once (it keeps no state between calls): every queued email dumps its facts.
_ENCODER = json.JSONEncoder(default=_tagged, ensure_ascii=False, separators=(",", ":"))


def dump_content(content: dict[str, Any]) -> str:
    return _ENCODER.encode(content)


def load_content(text: str) -> dict[str, Any]:
    loaded = json.loads(text, object_hook=_untagged)
    assert isinstance(loaded, dict)
    return loaded
