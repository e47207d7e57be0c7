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
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session, selectinload  # noqa: E402

from daemon.app import build  # noqa: E402
from daemon.cli.clients import client_json  # noqa: E402
from daemon.cli.state import print_json, print_json_chunks  # noqa: E402
from daemon.config import load_config  # noqa: E402
from daemon.models import Client, Company, CompanyProduct, Firm, Product, User  # noqa: E402
from daemon.views import ClientView  # noqa: E402
from tests.conftest import Cli, Env  # noqa: E402

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # control characters, quotes, emoji, bidi
# Dates as the database gives them to client_json (daemon.client_list.utc_text): with and without microseconds.
_iso = st.none() | st.datetimes().map(lambda when: when.isoformat(" ", "microseconds"))
_rows = st.tuples(
    st.integers(min_value=0, max_value=2**63), _text, st.sampled_from(["business", "individual", Status.ACTIVE]),
    _text, _text, st.none() | _text, st.none() | _text, st.none() | _text, _iso, _iso, st.none() | _text,
)


def _view(firm: str, row: tuple, products: tuple[str, ...]) -> ClientView:  # type: ignore[type-arg]
    client_id, name, kind, status, billing, company, email, phone, connected_at, trial_ends_at, admin = row
    when = lambda text: None if text is None else datetime.fromisoformat(text).replace(tzinfo=timezone.utc)  # noqa: E731
    return ClientView(client_id, firm, name, kind, status, billing, company, email, phone, when(connected_at),
                      products, when(trial_ends_at), admin)


@given(_text, _rows, st.lists(_text, max_size=3).map(tuple))
def test_client_json_is_the_generic_encoding(firm: str, row: tuple, products: tuple[str, ...]) -> None:  # type: ignore[type-arg]
    assert client_json(firm)([(row, products)]) == ["  " + pretty_json(_view(firm, row, products).as_dict(), "  ")]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 7])
def test_print_json_chunks_join_into_one_array(count: int, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [((i, f"c{i}", "business", "active", "none", None, None, None, None, None, None), ("p",)) for i in range(count)]
    views = [_view("F", row, products) for row, products in rows]
    expected = json.dumps([v.as_dict() for v in views], indent=2, ensure_ascii=False) + "\n"
    print_json(views, chunk=2)  # chunk boundaries fall on and off the end
    assert capsys.readouterr().out == expected
    print_json_chunks(map(client_json("F"), [rows[:2], [], rows[2:5], rows[5:]]))  # an empty batch too
    assert capsys.readouterr().out == expected


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


# -- `cabinet client list` on a real roster, against a plain ORM reading of the same rows ---------

NASTY = "\"quoted\" back\\slash \t tab \x01\x1f\x7f \u2028 é « » 🍞 \u202e"


def _roster(env: Env) -> None:
    """Every kind, billing and status, accents and escapes, nulls, several products, primary admins
    both staff and company, trials with and without microseconds, written straight to the tables."""
    cabinet = build(load_config(env.config_path))
    try:
        with cabinet.sessions.begin() as s:
            now = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)
            firm = Firm(name="Gagnon & Associés « Québec »", name_key="gagnon & associés « québec »",
                        email="info@gagnon.example", created_at=now)
            other = Firm(name="Other CPA", name_key="other cpa", email="o@other.example", created_at=now)
            staff = User(email="marie@gagnon.example", name="Marie", password_hash="x", locale="fr",
                         timezone="America/Montreal", created_at=now)
            s.add_all([firm, other, staff])
            s.flush()
            product_ids = list(s.scalars(select(Product.id).order_by(Product.position.desc())))
            assert len(product_ids) >= 3
            i = 0
            for kind in ("business", "individual"):
                for billing in ("wholesale", "direct", "none", "self-paid"):
                    for status in ("active", "trial", "setup pending", "discount lapsed"):
                        i += 1
                        company = None
                        if i % 5:
                            company = Company(
                                name=f"Compagnie {i} {NASTY}" if i % 3 else f"Cie {i}", name_key=f"cie {i}", kind=kind,
                                admin_email=f"admin{i}@cie.example", admin_name="A", admin_locale="fr",
                                admin_timezone="UTC", subscription="none", created_at=now,
                                trial_ends_at=[None, now, now.replace(microsecond=0), now + timedelta(days=400)][i % 4],
                            )
                            s.add(company)
                            s.flush()
                            for product in product_ids[: i % 4]:  # none, one or several, stored out of order
                                s.add(CompanyProduct(company_id=company.id, product_id=product))
                        s.add(Client(
                            firm_id=firm.id, company_id=company.id if company else None, kind=kind,
                            name=f"Client {i:02d} {NASTY if i % 2 else 'Lévesque'}", name_key=f"client {99 - i:02d}",
                            email=None if i % 7 == 0 else f"owner{i}@client.example",
                            phone=None if i % 2 else f'514 "{i}" \\ \t \x01 é',  # 50 characters at most
                            billing=billing, status=status,
                            connected_at=[None, now, now.replace(microsecond=0), now - timedelta(days=3000)][i % 4],
                            created_at=now, primary_admin_id=staff.id if i % 3 == 0 else None,
                        ))
    finally:
        cabinet.close()


def _reference(env: Env, firm_name: str) -> list[ClientView]:
    """The roster read the slow, obvious way: the ORM's objects and relationships, one by one."""
    cabinet = build(load_config(env.config_path))
    try:
        with Session(cabinet.engine) as s:
            firm = s.scalars(select(Firm).where(Firm.name == firm_name)).one()
            views = []
            for c in s.scalars(select(Client).where(Client.firm_id == firm.id).order_by(Client.name_key)
                               .options(selectinload(Client.company).selectinload(Company.products))):
                company = c.company
                admin = s.get(User, c.primary_admin_id) if c.primary_admin_id else None
                views.append(ClientView(
                    c.id, firm.name, c.name, c.kind, c.status, c.billing, company.name if company else None, c.email,
                    c.phone, c.connected_at, tuple(p.id for p in company.products) if company else (),
                    company.trial_ends_at if company and c.billing == "direct" else None,
                    admin.email if admin else (company.admin_email if company else None),
                ))
            return views
    finally:
        cabinet.close()


def test_client_list_json_is_the_reference_roster_byte_for_byte(
    cli: Cli, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _roster(env)
    firm = "Gagnon & Associés « Québec »"
    expected = _reference(env, firm)
    assert len(expected) == 32 and any(v.products[1:] for v in expected) and any(v.trial_ends_at for v in expected)
    assert {v.connected_at.microsecond for v in expected if v.connected_at} == {0, 891011}
    monkeypatch.setenv("PGTZ", "America/Montreal")  # PostgreSQL: a session zone other than UTC changes nothing
    output = cli("client", "list", "--firm", "  gagnon &  ASSOCIÉS « québec »", "--json").output
    assert output == json.dumps([v.as_dict() for v in expected], indent=2, ensure_ascii=False) + "\n"
    # The same read behind the table and Roster.list_clients, as aware datetimes.
    cabinet = build(load_config(env.config_path))
    try:
        assert cabinet.roster.list_clients(firm) == expected
    finally:
        cabinet.close()
    assert cli("client", "list", "--firm", "Other CPA", "--json").output == "[]\n"
