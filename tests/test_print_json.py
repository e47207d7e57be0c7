"""`--json` output is exactly what ``json.dumps(..., indent=2, ensure_ascii=False)`` prints."""

from __future__ import annotations

import json
from collections import OrderedDict
from enum import IntEnum, StrEnum
from typing import Any

import pytest

from daemon.cli.state import pretty_json


class Status(StrEnum):
    ACTIVE = "active"


class Level(IntEnum):
    HIGH = 3


SAMPLES: list[Any] = [
    {},
    [],
    {"id": 1, "name": "Boulangerie Roy « été »", "phone": None, "ok": True, "gone": False, "ratio": 0.1,
     "big": 10**30, "neg": -7, "nan": float("nan"), "inf": float("-inf"), "status": Status.ACTIVE, "level": Level.HIGH,
     "products": [], "firms": ["Tremblay CPA", "Gagnon & Associés"], "nested": {"a": [{"b": {}}, [], [1, [2]]]},
     "quote\"and\\back\nslash\u2028": "tab\tcontrol\x01 emoji 🍞 bidi \u202e", "tuple": (1, "x")},
    {1: "number key", None: "none key", "s": 2.5},
    OrderedDict(b=[OrderedDict(), 1], a="x"),
    "just a string",
    None,
    12.0,
]


@pytest.mark.parametrize("value", SAMPLES)
def test_same_bytes_as_json_dumps(value: Any) -> None:
    expected = json.dumps(value, indent=2, ensure_ascii=False)
    assert pretty_json(value) == expected
    assert pretty_json(value, "  ") == expected.replace("\n", "\n  ")


def test_what_json_refuses_is_refused() -> None:
    with pytest.raises(TypeError):
        pretty_json({"when": object()})
