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


# -- the client list's own encoder (daemon.cli.clients.client_json) ------------------------------

from datetime import datetime, timedelta, timezone  # noqa: E402

from hypothesis import given, strategies as st  # noqa: E402

from daemon.cli.clients import client_json  # noqa: E402
from daemon.cli.state import print_json  # noqa: E402
from daemon.views import ClientView  # noqa: E402

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # control characters, quotes, emoji, bidi
_when = st.none() | st.datetimes(timezones=st.just(timezone.utc)) | st.datetimes(
    timezones=st.just(timezone(timedelta(hours=-5))))
_views = st.builds(
    ClientView,
    id=st.integers(min_value=0, max_value=2**63),
    firm=_text, name=_text, kind=st.sampled_from(["business", "individual", Status.ACTIVE]), status=_text,
    billing=_text, company=st.none() | _text, email=st.none() | _text, phone=st.none() | _text,
    connected_at=_when, products=st.lists(_text, max_size=3).map(tuple), trial_ends_at=_when,
    primary_admin=st.none() | _text,
)


@given(_views)
def test_client_json_is_the_generic_encoding(view: ClientView) -> None:
    assert client_json(view) == "  " + pretty_json(view.as_dict(), "  ")


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 7])
def test_print_json_chunks_join_into_one_array(count: int, capsys: pytest.CaptureFixture[str]) -> None:
    views = [ClientView(i, "F", f"c{i}", "business", "active", "none", None, None, None, None, ("p",)) for i in range(count)]
    print_json(views, chunk=2, encode=client_json)  # chunk boundaries fall on and off the end
    assert capsys.readouterr().out == json.dumps([v.as_dict() for v in views], indent=2, ensure_ascii=False) + "\n"


def test_client_view_init_takes_every_field_in_order() -> None:
    # ClientView writes its own __init__ (speed); a field added to the class must be added there too.
    import dataclasses
    import inspect

    params = list(inspect.signature(ClientView.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(ClientView)]
    view = ClientView(*range(len(params)))
    assert [getattr(view, name) for name in params] == list(range(len(params)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.name = "changed"  # type: ignore[misc]
