"""A prepared read (daemon.prepared) gives the rows ``Connection.execute`` gives, for the invitation
page's read in every state a link shows, and fails as SQLAlchemy does, returning its connection."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, select
from sqlalchemy.exc import DBAPIError

from daemon.app import build
from daemon.config import load_config
from daemon.db import connections_kept, engine_of, read_connections
from daemon.faults import storage_fault
from daemon.link_opens import detail_text, invitation_detail
from daemon.prepared import PreparedRead
from daemon.roster import _INVITATION_PAGE
from tests.conftest import Cli, Env, Seed


def _token(sent: str) -> str:
    return sent.split("/invitations/")[1].split()[0]


def test_the_invitation_page_read_gives_the_rows_core_gives(cli: Cli, seed: Seed, env: Env) -> None:
    cli("company", "add", "Érablière Roy", "--admin-email", "paul@erabliere.example", "--admin-name", "Paul Roy")
    cli("company", "add", "Fromagerie Côté", "--admin-email", "ana@cote.example", "--admin-name", "Ana Côté")
    accepted = _token(cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output)
    declined = _token(cli("invitation", "send", "--company", "Érablière Roy", "--email", seed.accountant).output)
    cli("invitation", "send", "--company", "Fromagerie Côté", "--email", "nobody@elsewhere.example")
    cabinet = build(load_config(env.config_path))
    try:
        user_id = env.sql("SELECT id FROM users WHERE email = :e", e=seed.accountant)[0][0]
        cabinet.roster.accept_invitation(accepted, user_id, None)
        cabinet.roster.decline_invitation(declined, user_id)
        pending = env.sql("SELECT id FROM invitations WHERE email = 'nobody@elsewhere.example'")[0][0]
        revoked = _token(cli("invitation", "send", "--company", "Fromagerie Côté", "--email", seed.accountant).output)
        cabinet.roster.revoke_invitation(cabinet.roster.open_invitation(revoked).id)
        opening = cabinet.link_opens.opening_of("/invitations/" + accepted)
        assert opening is not None
        cabinet.link_opens.record_openings([opening])  # one opening recorded: "opened" is true there
        nonces = dict(env.sql("SELECT id, nonce FROM invitations ORDER BY id"))
        ids = list(nonces)
        assert pending in ids and len(ids) == 4
        engine = engine_of(cabinet.sessions)
        prepared = PreparedRead(read_connections(cabinet.sessions), _INVITATION_PAGE)
        states = set()
        # Each invitation with its own nonce, one with another's (no row: the link is not that invitation's),
        # and an id that names none.
        for invitation_id, nonce in [*nonces.items(), (ids[0], nonces[ids[1]]), (999_999, nonces[ids[0]])]:
            binds: dict[str, Any] = {
                "id": invitation_id, "nonce": nonce, "opened_detail": detail_text(invitation_detail(invitation_id)),
            }
            with engine.connect() as connection:
                core = connection.execute(_INVITATION_PAGE, binds).one_or_none()
            ours = prepared.one_or_none(**binds)
            if core is None:
                assert ours is None
                continue
            assert ours._fields == tuple(core._mapping.keys())
            assert tuple(ours) == tuple(core)
            assert [type(value) for value in ours] == [type(value) for value in core]
            # Dates in the same zone too (an aware datetime compares equal across zones).
            assert [getattr(value, "tzinfo", None) for value in ours] == [getattr(value, "tzinfo", None) for value in core]
            assert ours.expires_at.tzinfo is not None  # typed as the model's column says (aware UTC)
            states.add((ours.state, ours.opened))
        assert {state for state, _ in states} == {"pending", "accepted", "declined", "revoked"}
        assert ("accepted", True) in states and ("pending", False) in states
        # Every read gave its connection back (the writer keeps its own between groups, idle).
        assert engine.pool.checkedout() == connections_kept(cabinet.sessions)
    finally:
        cabinet.close()


def test_a_failing_read_raises_sqlalchemys_error_and_gives_its_connection_back(cli: Cli, env: Env) -> None:
    cabinet = build(load_config(env.config_path))
    try:
        engine = engine_of(cabinet.sessions)
        missing = Table("no_such_table", MetaData(), Column("id", Integer))
        prepared = PreparedRead(read_connections(cabinet.sessions), select(missing.c.id).where(missing.c.id == bindparam("id")))
        with pytest.raises(DBAPIError) as raised:
            prepared.one_or_none(id=1)
        assert raised.value.statement and "no_such_table" in raised.value.statement
        assert engine.pool.checkedout() == connections_kept(cabinet.sessions)
        # The same read works again on the same pool: nothing was left broken.
        again = PreparedRead(read_connections(cabinet.sessions), _INVITATION_PAGE)
        assert again.one_or_none(id=1, nonce="", opened_detail="") is None
    finally:
        cabinet.close()


def test_a_lost_database_is_a_storage_fault_not_a_bug(cli: Cli, env: Env) -> None:
    # What the web adapter answers 503 for: the driver's error reaches it as SQLAlchemy's OperationalError.
    if not env.is_sqlite:
        pytest.skip("the SQLite file is what this takes away")
    cabinet = build(load_config(env.config_path))
    try:
        engine = engine_of(cabinet.sessions)
        engine.dispose()
        database = env.database
        assert not isinstance(database, str)
        hidden = database.with_name(database.name + ".away")
        database.rename(hidden)
        database.mkdir()  # a folder where the file was: SQLite cannot open it
        try:
            with pytest.raises(DBAPIError) as raised:
                PreparedRead(read_connections(cabinet.sessions), _INVITATION_PAGE).one_or_none(id=1, nonce="", opened_detail="")
            assert storage_fault(raised.value) is not None
        finally:
            database.rmdir()
            hidden.rename(database)
    finally:
        cabinet.close()
