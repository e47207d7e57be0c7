"""A link opening's detail text: the one ``json.dumps(sort_keys=True)`` writes, which the page's read
compares with the stored events (``opened_before``), so a written-by-hand fast path must match it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import NullPool

from daemon.link_opens import detail_text, invitation_detail
from daemon.roster import _INVITATION_PAGE
from tests.conftest import Cli, Env, Seed


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


def test_the_page_asks_opened_before_of_the_companys_first_openings_alone(cli: Cli, seed: Seed, env: Env) -> None:
    """The link page's "opened already?" probes events by company and kind (migration 0018), not every
    event of the company from the table (SQLite's plan for the page's own statement)."""
    if not env.is_sqlite:
        pytest.skip("SQLite's query plan")
    sql = str(_INVITATION_PAGE.compile(dialect=sqlite.dialect()))
    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            plan = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("link.opened", "{}", 1, "x"))]
    finally:
        engine.dispose()
    assert "SEARCH events USING INDEX ix_events_company_kind (company_id=? AND kind=?)" in plan, plan
