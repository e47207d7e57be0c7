"""A prepared write (daemon.prepared_write) stores what its Core statement stores through
``Connection.execute``: the accept's invitation transition, client and event inserts and outbox
rows, each run both ways on the real database and compared row for row; and it fails as
SQLAlchemy does."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.exc import DBAPIError

from daemon.app import build
from daemon.config import load_config
from daemon.db import engine_of
from daemon.models import Client, Event, Invitation, OutboxMessage, search_key
from daemon.prepared_write import PreparedWrite
from daemon.roster import _ACCEPT, _CLIENT_INSERT, _EVENT_INSERT
from mailer.outbox import _PREPARED_INSERT
from tests.conftest import Cli, Env, Seed


def _token(sent: str) -> str:
    return sent.split("/invitations/")[1].split()[0]


def _newest(connection: Connection, table: Table, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` rows of ``table``, without their ids (a rolled-back sequence moves on): as
    SQLAlchemy reads them, and as the driver gives them (the stored text of a SQLite datetime)."""
    rows = connection.execute(select(table).order_by(table.c.id.desc()).limit(count)).all()
    raw = connection.exec_driver_sql(f"SELECT * FROM {table.name} ORDER BY id DESC LIMIT {count}")
    names = [column[0] for column in raw.cursor.description]
    return [{key: value for key, value in row._mapping.items() if key != "id"} for row in rows] + [
        {"raw": {name: value for name, value in zip(names, row) if name != "id"}} for row in raw.fetchall()
    ]


def _both_ways(
    engine: Engine, prepared: PreparedWrite, table: Table, core_binds: Any, binds: Any, many: bool = False,
    together: bool = False,
) -> None:
    """Run the statement through Core, then prepared, each in a transaction rolled back; compare what
    each returned and stored (values and their Python types). ``many``: an executemany; ``together``:
    the rows as one multi-row INSERT (``rows``), compared with Core's executemany of them."""
    count = len(binds) if many or together else 1
    outcomes = []
    for way in ("core", "prepared"):
        with engine.connect() as connection:
            transaction = connection.begin()
            returned: Any = None
            if way == "core":
                result = connection.execute(prepared.statement, core_binds)
                if together:  # every row Core's executemany returned, without the ids (ordered below)
                    returned = sorted(({k: v for k, v in row._mapping.items() if k != "id"} for row in result.all()),
                                      key=repr) if result.returns_rows else None
                else:
                    returned = result.first() if result.returns_rows else None
                    returned = None if returned is None else dict(returned._mapping)
            elif many:
                prepared.many(connection, binds)
            elif together:
                found = prepared.rows(connection, binds)  # RETURNING's order is the database's: compared sorted
                returned = sorted(({k: v for k, v in row._asdict().items() if k != "id"} for row in found),
                                  key=repr) if prepared.compiled(engine.dialect).row is not None else None
            else:
                row = prepared.one(connection, binds)
                returned = None if row is None else row._asdict()
            stored = _newest(connection, table, count)
            transaction.rollback()
        if returned is not None and not together:
            returned.pop("id")
        outcomes.append((returned, stored))
    (core_returned, core_stored), (returned, stored) = outcomes
    assert stored == core_stored
    assert [[type(v) for v in row.values()] for row in stored] == [[type(v) for v in row.values()] for row in core_stored]
    assert returned == core_returned
    if together and returned is not None:
        assert len(returned) == count
        assert [[type(v) for v in row.values()] for row in returned] == [[type(v) for v in row.values()] for row in core_returned]
    elif returned is not None:
        assert [type(v) for v in returned.values()] == [type(v) for v in core_returned.values()]


def test_the_accepts_writes_store_what_core_stores(cli: Cli, seed: Seed, env: Env) -> None:
    cli("company", "add", "Érablière Roy", "--admin-email", "paul@erabliere.example", "--admin-name", "Paul Roy")
    accepted = _token(cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output)
    cli("invitation", "send", "--company", "Érablière Roy", "--email", seed.accountant)
    cabinet = build(load_config(env.config_path))
    try:
        engine = engine_of(cabinet.sessions)
        user_id = env.sql("SELECT id FROM users WHERE email = :e", e=seed.accountant)[0][0]
        cabinet.roster.accept_invitation(accepted, user_id, None)  # the real path: its outbox rows and event
        firm_id = env.sql("SELECT firm_id FROM memberships WHERE user_id = :u", u=user_id)[0][0]
        pending_id, nonce, company_id = env.sql(
            "SELECT id, nonce, company_id FROM invitations WHERE state = 'pending'")[0]
        with engine.connect() as connection:  # the accepted one's decided_at, typed (aware UTC)
            decided = connection.scalar(select(Invitation.__table__.c.decided_at)
                                        .where(Invitation.__table__.c.state == "accepted"))
        assert decided is not None and decided.tzinfo is not None

        # The invitation's guarded transition: moved as Core moves it (SQLite's returns no row: its count says).
        transition = _ACCEPT._counted
        assert transition is not None
        binds = {"transition_row_id": pending_id, "b_nonce": nonce, "b_now": decided, "b_decided": decided,
                 "b_firm": firm_id, "b_user": user_id, "b_renewal": None}
        _both_ways(engine, transition, Invitation.__table__, binds, binds)
        with engine.connect() as connection:
            transaction = connection.begin()
            assert transition.changed(connection, binds) == 1
            transaction.rollback()
        # ...and a stale nonce, or a renewal requested since the read, matches nothing either way.
        for stale in ({**binds, "b_nonce": "not-the-nonce"}, {**binds, "b_renewal": decided}):
            with engine.connect() as connection:
                transaction = connection.begin()
                assert transition.changed(connection, stale) == 0
                assert connection.execute(transition.statement, stale).rowcount == 0
                # An executemany counts the rows every execution changed: one of the two here.
                assert transition.many(connection, [stale, binds]) == 1
                transaction.rollback()

        # The client insert (search_key given; Core computes it from its Python default).
        client = {"firm_id": firm_id, "company_id": company_id, "kind": "company", "name": "Érablière Roy",
                  "name_key": "érablière roy", "email": "paul@erabliere.example", "billing": "none",
                  "status": "active", "connected_at": decided, "created_at": decided}
        prepared_client = _CLIENT_INSERT[engine.dialect.name]
        _both_ways(engine, prepared_client, Client.__table__, client, {**client, "search_key": search_key("Érablière Roy")})
        with engine.connect() as connection:  # an existing roster entry: nothing inserted, None returned
            entry = connection.execute(select(Client.__table__).limit(1)).one()._mapping
        with engine.connect() as connection, connection.begin():
            assert prepared_client.one(connection, {**client, "company_id": entry["company_id"],
                                                    "search_key": "x"}) is None

        # The event row and the outbox rows (the ones the real accept stored, as new rows).
        columns = [c.key for c in Event.__table__.columns if c.key != "id"]
        with engine.connect() as connection:
            event = dict(connection.execute(select(*(Event.__table__.c[k] for k in columns))
                                            .order_by(Event.__table__.c.id.desc()).limit(1)).one()._mapping)
            outbox_columns = list(_PREPARED_INSERT._column_keys or ())
            emails = [dict(row._mapping) for row in connection.execute(
                select(*(OutboxMessage.__table__.c[k] for k in outbox_columns)).order_by(OutboxMessage.__table__.c.id))]
        assert len(emails) >= 2
        _both_ways(engine, _EVENT_INSERT, Event.__table__, event, event)
        copies = [{**email, "message_id": f"<copy{i}@example>", "ref": f"copy{i}"} for i, email in enumerate(emails)]
        _both_ways(engine, _PREPARED_INSERT, OutboxMessage.__table__, copies, copies, many=True)

        # The same rows as ONE multi-row INSERT (``rows``: SQLite's ``?`` groups, psycopg's ``%(name)s``
        # written as ``%s`` groups): stored as Core's executemany stores them.
        _both_ways(engine, _PREPARED_INSERT, OutboxMessage.__table__, copies, copies, together=True)
        events = [{**event, "actor": f"{n}@example"} for n in range(3)]
        _both_ways(engine, _EVENT_INSERT, Event.__table__, events, events, together=True)
        clients = [{**client, "name": name, "name_key": name.lower(), "company_id": None,
                    "search_key": search_key(name)} for name in ("Érablière A", "Érablière B")]
        _both_ways(engine, prepared_client, Client.__table__,
                   [{k: v for k, v in row.items() if k != "search_key"} for row in clients], clients, together=True)
    finally:
        cabinet.close()


def test_a_failing_write_raises_what_core_raises(cli: Cli, seed: Seed, env: Env) -> None:
    cabinet = build(load_config(env.config_path))
    try:
        engine = engine_of(cabinet.sessions)
        # No actor: NOT NULL refuses it, in the driver.
        event = {"at": None, "kind": "x", "actor": None, "channel": "cli", "firm_id": None, "company_id": None,
                 "client_id": None, "detail": "{}"}
        raised = []
        for way in ("core", "prepared"):
            with engine.connect() as connection, connection.begin():
                with pytest.raises(DBAPIError) as caught:
                    if way == "core":
                        connection.execute(_EVENT_INSERT.statement, event)
                    else:
                        _EVENT_INSERT.one(connection, event)
                raised.append(caught.value)
        assert type(raised[0]) is type(raised[1])
        assert raised[1].statement and "INSERT INTO events" in raised[1].statement
        # The next write on the pool goes through and is stored.
        with engine.connect() as connection, connection.begin():
            at = connection.scalar(select(Event.__table__.c.at).limit(1))
            assert _EVENT_INSERT.one(connection, {**event, "at": at, "actor": "a@example"}) is None
            assert connection.scalar(select(Event.__table__.c.actor).order_by(Event.__table__.c.id.desc())) == "a@example"
    finally:
        cabinet.close()


def test_a_row_binding_one_instant_to_several_columns_stores_what_core_stores(cli: Cli, seed: Seed, env: Env) -> None:
    """SQLite's prepared rows write an instant bound to several columns of a row once (``Compiled.parameters``):
    each column must still get its own value's text, whether the row repeats one object, alternates two, or
    gives equal instants as different objects or in another zone."""
    accepted = _token(cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output)
    cabinet = build(load_config(env.config_path))
    try:
        engine = engine_of(cabinet.sessions)
        user_id = env.sql("SELECT id FROM users WHERE email = :e", e=seed.accountant)[0][0]
        cabinet.roster.accept_invitation(accepted, user_id, None)  # an email row to vary
        outbox_columns = list(_PREPARED_INSERT._column_keys or ())
        with engine.connect() as connection:
            email = dict(connection.execute(select(*(OutboxMessage.__table__.c[k] for k in outbox_columns))
                                            .order_by(OutboxMessage.__table__.c.id).limit(1)).one()._mapping)
        first = email["created_at"]
        later = first + timedelta(seconds=1, microseconds=7)
        times = [
            (first, first, first),  # one object in all three columns
            (first, later, first),  # two objects alternating: the third column is the first's again
            (later, first, later),
            (first, first.replace(), first.astimezone(timezone(timedelta(hours=-5)))),  # equal instants, other objects
            (later, None, first),  # NULL between two instants
        ]
        rows = [{**email, "message_id": f"<times{n}@example>", "ref": f"times{n}", "created_at": created,
                 "queued_at": queued, "next_attempt_at": next_attempt}
                for n, (created, queued, next_attempt) in enumerate(times)]
        _both_ways(engine, _PREPARED_INSERT, OutboxMessage.__table__, rows, rows, many=True)
        _both_ways(engine, _PREPARED_INSERT, OutboxMessage.__table__, rows, rows, together=True)
    finally:
        cabinet.close()
