"""The Alembic migrations build exactly the models' schema, and upgrading keeps the data.

Runs on the suite's database: SQLite, or a fresh database on the PostgreSQL test
server when ``CABINET_TEST_DATABASE_URL`` is set (see conftest), so both hold on both.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from pprint import pformat
from types import ModuleType
from typing import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, bindparam, inspect, select, text
from sqlalchemy.orm import Session

from daemon import db
from daemon.models import Base, Company, Firm, Invitation, Product, User, UTCDateTime
from tests.conftest import fresh_database_url

CREATED = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
EXPIRES = datetime(2026, 2, 1, 3, 4, 5, tzinfo=timezone.utc)
DECIDED = datetime(2026, 1, 3, 9, 0, tzinfo=timezone.utc)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(db.alembic_config(url)).get_current_head()


# The roster search's trigram index (migrations 0015, 0022, 0023) lives outside the models: SQLite's FTS5
# table and its shadow tables, PostgreSQL's GIN index, or 0015's two made by hand (tests/test_client_search.py
# and tests/test_migrations_search_and_events.py check them). So does PostgreSQL's one opening per link
# (0019; checked below).
SEARCH_INDEX = ("clients_search", "ix_clients_search_trgm", "ix_clients_search_key_trgm", "ix_clients_email_trgm")
OUTSIDE_THE_MODELS = (*SEARCH_INDEX, "uq_events_link_opened")


def not_outside_the_models(name: str | None, kind: str, parents: dict) -> bool:
    return not (name or "").startswith(OUTSIDE_THE_MODELS)


def test_the_migrations_build_exactly_the_models_schema(tmp_path: Path) -> None:
    url = fresh_database_url(tmp_path)
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        db.upgrade(engine)  # idempotent
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": not_outside_the_models})
            differences = compare_metadata(context, Base.metadata)
            current = context.get_current_revision()
            reflected = inspect(conn)
            tables = {name for name in reflected.get_table_names() if not_outside_the_models(name, "table", {})}
            indexes = {table: {ix["name"]: ix for ix in reflected.get_indexes(table)} for table in tables}
    finally:
        engine.dispose()
    # Tables, columns and their types, nullability, indexes, unique constraints, foreign keys.
    assert differences == [], "the migrations and daemon/models.py disagree:\n" + pformat(differences)
    assert current == head_revision(url)
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    # Partial unique indexes ("one pending … per …"): compare_metadata matches them by name and
    # columns only, so check here that each is unique (and, where the database reports it, partial).
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            where = index.dialect_options["postgresql"]["where"]
            if where is None:
                continue
            found = indexes[table.name].get(index.name)
            assert found is not None, f"{table.name}: index {index.name} missing"
            assert bool(found["unique"]) == bool(index.unique), index.name
            reflected_where = found.get("dialect_options", {}).get("postgresql_where")
            if engine.dialect.name == "postgresql":
                assert reflected_where is not None, f"{index.name} is not partial"
                assert "pending" in str(reflected_where), f"{index.name}: WHERE {reflected_where}"


@contextmanager
def at_head(tmp_path: Path) -> Iterator[Connection]:
    """A connection to a fresh database upgraded to head (the engine disposed of afterwards)."""
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def test_on_postgresql_the_database_keeps_one_opening_per_link(tmp_path: Path) -> None:
    """Migration 0019's partial UNIQUE index, which ``daemon.link_opens``'s insert names in its
    ``ON CONFLICT``: on PostgreSQL only (SQLite's single writer keeps one opening per link)."""
    with at_head(tmp_path) as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            found = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'uq_events_link_opened'").all()
        else:
            found = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_events_link_opened'").all()
    if dialect == "sqlite":
        assert found == []
    else:
        assert [row[0] for row in found] == [
            "CREATE UNIQUE INDEX uq_events_link_opened ON public.events USING btree (company_id, md5(detail)) "
            "WHERE ((kind)::text = 'link.opened'::text)"]


def insert(conn, sql: str, **params) -> None:
    """Raw SQL; datetimes bound as the application stores them (UTC), on either database."""
    statement = text(sql).bindparams(
        *(bindparam(name, type_=UTCDateTime()) for name, value in params.items() if isinstance(value, datetime))
    )
    conn.execute(statement, params)


def migration(revision: str) -> ModuleType:
    """A migration's module, for its constants (migrations are files, not a package)."""
    path = next((db.MIGRATIONS / "versions").glob(f"{revision}_*.py"))
    spec = importlib.util.spec_from_file_location(f"cabinet_migration_{revision}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def catalogue_of_migration_0002() -> list[tuple[str, str, str]]:
    return list(migration("0002").CATALOGUE)


def test_the_database_at_head_has_the_triggers_the_code_relies_on(tmp_path: Path) -> None:
    """The roster's search index (0015) and its counts (0016, 0017) are kept by triggers on ``clients``.
    On SQLite a migration that rebuilds ``clients`` (Alembic's batch mode copies the table and drops the
    old one) drops them with it: the counts' and search's tests then fail far from the cause, where this
    one names the triggers missing (or one no migration meant to leave)."""
    with at_head(tmp_path) as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            found = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars())
            search_index = conn.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'clients_search'").scalar()
        else:
            found = set(conn.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                "AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace)"
            ).scalars())
    if dialect == "sqlite":
        # Without FTS5's trigram tokenizer 0015 builds no search index, and the search scans the roster.
        search = {sql.split()[2] for sql in migration("0015").SQLITE_TRIGGERS}  # CREATE TRIGGER name …
        expected = set(migration("0017").SQLITE_TRIGGERS) | (search if search_index else set())
    else:  # the search index is GIN indexes (tests/test_client_search.py); 0017 kept 0016's triggers
        expected = set(migration("0016").PG_TRIGGERS)
    assert found == expected


def test_upgrading_a_database_made_by_the_first_migration_keeps_its_data(tmp_path: Path) -> None:
    url = fresh_database_url(tmp_path)
    engine = db.make_engine(url)
    try:
        db.upgrade(engine, "0001")
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0001"
        with engine.begin() as conn:
            insert(conn, "INSERT INTO firms (name, name_key, email, created_at) "
                         "VALUES ('Tremblay CPA', 'tremblay cpa', 'bureau@tremblay.example', :at)", at=CREATED)
            insert(conn, "INSERT INTO companies (name, name_key, kind, admin_email, admin_name, admin_locale, "
                         "admin_timezone, subscription, has_quickbooks_time, created_at) "
                         "VALUES ('Boulangerie Roy', 'boulangerie roy', 'business', 'julie@roy.example', "
                         "'Julie Roy', 'fr', 'America/Montreal', 'self-paid', :qbt, :at)", qbt=True, at=CREATED)
            insert(conn, "INSERT INTO users (email, name, password_hash, locale, timezone, created_at) "
                         "VALUES ('marie@tremblay.example', 'Marie Tremblay', '$argon2id$v=19$fake', 'fr', "
                         "'America/Toronto', :at)", at=CREATED)
            firm_id = conn.execute(text("SELECT id FROM firms WHERE name_key = 'tremblay cpa'")).scalar_one()
            company_id = conn.execute(text("SELECT id FROM companies WHERE name_key = 'boulangerie roy'")).scalar_one()
            user_id = conn.execute(text("SELECT id FROM users WHERE email = 'marie@tremblay.example'")).scalar_one()
            insert(conn, "INSERT INTO invitations (company_id, email, invited_by, nonce, state, created_at, "
                         "expires_at, decided_at, firm_id, accepted_by_id) "
                         "VALUES (:company, 'marie@tremblay.example', 'julie@roy.example', "
                         "'0123456789abcdef0123456789abcdef', 'accepted', :created, :expires, :decided, "
                         ":firm, :user)",
                   company=company_id, firm=firm_id, user=user_id, created=CREATED, expires=EXPIRES, decided=DECIDED)

        db.upgrade(engine)

        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision(url)
        with Session(engine) as session:
            firm = session.scalars(select(Firm)).one()
            assert (firm.id, firm.name, firm.name_key, firm.email, firm.created_at) == (
                firm_id, "Tremblay CPA", "tremblay cpa", "bureau@tremblay.example", CREATED)
            company = session.scalars(select(Company)).one()
            assert (company.id, company.name, company.name_key, company.kind, company.admin_email,
                    company.admin_name, company.admin_locale, company.admin_timezone, company.subscription,
                    company.has_quickbooks_time, company.created_at) == (
                company_id, "Boulangerie Roy", "boulangerie roy", "business", "julie@roy.example", "Julie Roy",
                "fr", "America/Montreal", "self-paid", True, CREATED)
            user = session.scalars(select(User)).one()
            assert (user.id, user.email, user.name, user.password_hash, user.locale, user.timezone,
                    user.created_at) == (
                user_id, "marie@tremblay.example", "Marie Tremblay", "$argon2id$v=19$fake", "fr",
                "America/Toronto", CREATED)
            invitation = session.scalars(select(Invitation)).one()
            assert (invitation.company_id, invitation.email, invitation.invited_by, invitation.nonce,
                    invitation.state, invitation.created_at, invitation.expires_at, invitation.decided_at,
                    invitation.firm_id, invitation.accepted_by_id, invitation.superseded_by_id,
                    invitation.renewal_requested_at) == (
                company_id, "marie@tremblay.example", "julie@roy.example", "0123456789abcdef0123456789abcdef",
                "accepted", CREATED, EXPIRES, DECIDED, firm_id, user_id, None, None)
            assert invitation.company.name == "Boulangerie Roy" and invitation.accepted_by.email == user.email

            # The product catalogue is data that migration 0002 seeded.
            products = {p.id: (p.name, p.kind) for p in session.scalars(select(Product))}
            for product_id, name, kind in catalogue_of_migration_0002():
                assert product_id in products, f"product {product_id} missing"
                assert products[product_id][1] == kind

            # The upgraded database takes new rows (keys continue after the old ones).
            session.add(Firm(name="Gagnon", name_key="gagnon", email="info@gagnon.example", created_at=CREATED))
            session.commit()
            assert len(session.scalars(select(Firm.id)).all()) == 2
    finally:
        engine.dispose()


def test_on_postgresql_the_outbox_claims_are_hot_updates(tmp_path: Path) -> None:
    """Migration 0020's outbox ``fillfactor``: a claim (``claimed_until``, ``claim_token``, in no index)
    finds room on its row's page, so PostgreSQL writes no index entry for it. Queued emails of about
    800 bytes filled a page to the brim before, and most claims wrote one into each of the five indexes."""
    url = fresh_database_url(tmp_path)
    engine = db.make_engine(url)
    rows = 40  # several pages of them
    try:
        db.upgrade(engine)
        if engine.dialect.name != "postgresql":
            return  # no HOT updates, no fillfactor: nothing changed on SQLite
        with engine.begin() as conn:
            for n in range(rows):
                insert(conn, "INSERT INTO outbox (message_id, ref, kind, envelope_from, recipient, subject, state, "
                       "attempts, created_at, next_attempt_at, content) VALUES (:message_id, :ref, 'invitation', "
                       "'bounce@cabinet.example', :recipient, 'Invitation', 'pending', 0, :created, :created, :content)",
                       message_id=f"<{n}@cabinet.example>", ref=f"ref{n:05d}", recipient=f"admin{n}@company.example",
                       created=CREATED, content="x" * 600)
        with engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET claimed_until = :until, claim_token = 'claim' WHERE state = 'pending'")
                         .bindparams(bindparam("until", type_=UTCDateTime())), {"until": EXPIRES})
            updated, hot = conn.exec_driver_sql(
                "SELECT pg_stat_get_xact_tuples_updated('outbox'::regclass), "
                "pg_stat_get_xact_tuples_hot_updated('outbox'::regclass)").one()
            fillfactor = conn.exec_driver_sql("SELECT reloptions FROM pg_class WHERE oid = 'outbox'::regclass").scalar()
    finally:
        engine.dispose()
    assert (updated, hot) == (rows, rows)
    assert fillfactor == ["fillfactor=50"]


def test_on_postgresql_the_outbox_stores_an_emails_bytes_compressed_with_lz4(tmp_path: Path) -> None:
    """Migration 0020: an email's stored bytes are compressed with lz4 (pglz took 290k instructions an
    email in the backend, lz4 54k: bench/pg_compression.py). A server without lz4 keeps pglz (logged): then this is skipped."""
    url = fresh_database_url(tmp_path)
    engine = db.make_engine(url)
    email = (Path(__file__).parent / "fixtures" / "emails" / "en" / "client_added.sample.eml").read_bytes()
    try:
        db.upgrade(engine)
        if engine.dialect.name != "postgresql":
            return  # SQLite stores the bytes as they are
        with engine.begin() as conn:
            insert(conn, "INSERT INTO outbox (message_id, ref, kind, envelope_from, recipient, subject, state, "
                   "attempts, created_at, next_attempt_at, raw) VALUES ('<1@cabinet.example>', 'ref1', 'client_added', "
                   "'bounce@cabinet.example', 'staff@firm.example', 'A client', 'sent', 1, :created, :created, :raw)",
                   created=CREATED, raw=email)
            method, stored = conn.exec_driver_sql(
                "SELECT pg_column_compression(raw), pg_column_size(raw) FROM outbox").one()
            has_lz4 = conn.exec_driver_sql("SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' "
                                           "AND 'lz4' = ANY(enumvals)").scalar()
    finally:
        engine.dispose()
    if not has_lz4:
        pytest.skip("this PostgreSQL is built without lz4")
    assert method == "lz4"
    assert stored < len(email)
