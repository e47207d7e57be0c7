"""A link opening's detail text: the one ``json.dumps(sort_keys=True)`` writes, which the page's read
compares with the stored events (``opened_before``), so a written-by-hand fast path must match it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.link_opens import detail_text, invitation_detail


@pytest.mark.parametrize("detail", [
    invitation_detail(5),
    invitation_detail(2**40),
    invitation_detail(-3),
    {"purpose": "invitation", "ref": 5, "invitation_id": 6},
    {"purpose": "invitation", "ref": 5, "invitation_id": True},
    {"purpose": "invitation", "ref": 5, "other": 5},
    {"purpose": "manage", "ref": 3},
    {"purpose": "é\"\\\n<x>\u2028", "ref": -12, "a": "ü"},
    {"flag": True, "ref": 1},
    {"ratio": 1.5},
    {"list": [1, "a"]},
    {"none": None},
    {},
])
def test_detail_text_is_json_with_sorted_keys(detail: dict[str, Any]) -> None:
    assert detail_text(detail) == json.dumps(detail, sort_keys=True)
