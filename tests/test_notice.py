"""``Notice``, ``AcceptPlan`` and ``AcceptResult`` set their fields in one ``__dict__.update`` instead of the
frozen dataclass's ``object.__setattr__`` per field: the instances must be what the generated ``__init__``
made (the same fields, defaults, equality, hash and repr), and still frozen."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import pytest

from daemon.notices import Notice
from daemon.roster import AcceptPlan, AcceptResult


def _generated(cls: type) -> type:
    """A plain frozen dataclass with ``cls``'s fields and defaults: what ``cls`` was before its own ``__init__``."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True)


def _same(ours: Any, generated: Any) -> None:
    assert ours.__dict__ == generated.__dict__
    assert list(ours.__dict__) == list(generated.__dict__)  # the same order: repr and astuple follow the fields
    assert dataclasses.astuple(ours) == dataclasses.astuple(generated)
    assert repr(ours).split("(", 1)[1] == repr(generated).split("(", 1)[1]


NOTICES: list[dict[str, Any]] = [
    {"template": "client_added", "to": "a@b.example", "to_name": "A", "locale": "en", "timezone": "UTC"},
    {"template": "invitation", "to": "c@d.example", "to_name": "", "locale": "fr", "timezone": "America/Toronto",
     "context": {"company": "Roy", "at": datetime(2026, 1, 2, tzinfo=timezone.utc)}, "auto_submitted": False,
     "invitation_id": 3, "company_id": 4, "firm_id": 5, "audience": "firm_staff"},
]


@pytest.mark.parametrize("values", NOTICES)
def test_a_notice_is_what_the_generated_init_made(values: dict[str, Any]) -> None:
    generated = _generated(Notice)
    _same(Notice(**values), generated(**values))
    positional = list(values.values())
    _same(Notice(*positional), generated(*positional))


def test_a_notice_without_context_gets_a_new_dict_each_time() -> None:
    first, second = (Notice("t", "a@b.example", "A", "en", "UTC") for _ in range(2))
    assert first.context == {} and first.context is not second.context


def test_a_notice_is_frozen_equal_and_hashed_by_its_fields() -> None:
    notice = Notice(**NOTICES[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        notice.to = "x@y.example"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del notice.to  # type: ignore[misc]
    assert notice == Notice(**NOTICES[0]) and notice != Notice(**{**NOTICES[0], "to": "x@y.example"})
    assert dataclasses.replace(notice, to="x@y.example") == Notice(**{**NOTICES[0], "to": "x@y.example"})
    with pytest.raises(TypeError, match="unhashable"):  # the context is a dict, as it always was
        hash(notice)


def test_an_accept_plan_and_result_are_what_the_generated_init_made_and_frozen() -> None:
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    plan_values = ("row", 1, "Firm", None, ("a",), [{"subject": "s"}], now)
    plan = AcceptPlan(*plan_values)
    _same(plan, _generated(AcceptPlan)(*plan_values))
    assert plan == AcceptPlan(*plan_values) and plan != AcceptPlan(*plan_values[:-1], datetime.now(timezone.utc))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.now = now  # type: ignore[misc]

    result = AcceptResult("invitation", "client")  # type: ignore[arg-type]
    generated = _generated(AcceptResult)("invitation", "client")
    _same(result, generated)
    assert result == AcceptResult(invitation="invitation", client="client")  # type: ignore[arg-type]
    assert hash(result) == hash(("invitation", "client")) == hash(generated)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.client = "other"  # type: ignore[misc]
