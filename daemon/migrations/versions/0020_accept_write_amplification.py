"""less written per accept: clients' firm_id-only index goes; PostgreSQL's outbox keeps room for HOT claims, lz4 for the bytes

Measured with ``bench/pg_accept_work.py`` (its own PostgreSQL 15 cluster, a real ``cabinet serve``,
200 accepts after 30, 16 connections; full-page writes off, so WAL is the statements' own):

- ``ix_clients_firm_id (firm_id)`` answers nothing the others do not: ``ix_clients_firm_search``
  (firm_id, search_key, id), ``ix_clients_firm_created`` (firm_id, created_at, id) and the two unique
  constraints (firm_id, company_id) and (firm_id, name_key) all begin with firm_id, and either database
  reads a firm's clients (and checks the foreign key when a firm goes) from any of them. Every client
  written (an accept adds one) updated it: the accept's client INSERT went from 2,057 to 1,991 bytes of
  WAL (16.6 to 15.5 WAL records), 11 indexes to 10. On SQLite too (9 indexes to 8).
- PostgreSQL: the outbox worker's claim sets ``claimed_until`` and ``claim_token``, which no index
  holds, so it can be a HOT update (no new entry in the outbox's five indexes) — but only when the
  row's page has room for the new version, and a page filled by queued emails (about 800 bytes each)
  seldom had: 0.35 of the claims per email were HOT. ``fillfactor = 50`` leaves half of each page
  that inserts fill: every claim was HOT (outbox HOT updates 0.70 -> 2.00 per accept), the worker's
  WAL went from 7,824 to 6,022 bytes per accept, its buffer hits from 135 to 74; the whole accept
  with its two emails from 13,659 to 11,895 bytes of WAL. The price is small: a queued row leaves its
  half-filled page at its "sent" mark (which changes ``state``, held by ``ix_outbox_due``: never
  HOT), so the pages mostly hold sent rows: 2,104 -> 2,313 heap bytes per outbox row after 340
  accepts (``--schema``). Pages written before this migration keep their rows; new rows go to pages
  with the room. SQLite has no HOT updates.
- PostgreSQL: an email's stored bytes (``outbox.raw``, ~3.4 KB, stored at its first attempt) are
  compressed with lz4 rather than pglz. Measured with callgrind on a single-user ``postgres`` storing
  200 of the fixtures' emails (``bench/pg_compression.py``, ~3.5 KB each): 290k instructions per email
  with pglz, 54k with lz4, over storing them uncompressed; 1,788 bytes stored instead of 1,666 (about
  250 bytes more WAL per accept, for ~470k fewer instructions in the backend). PostgreSQL 14 or later
  built with lz4 (Debian's and the official images are); otherwise logged, and pglz stays. Values
  stored before keep pglz: each value says how it was compressed.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

log = logging.getLogger("cabinet.migrations")

OUTBOX_FILLFACTOR = 50


def upgrade() -> None:
    op.drop_index("ix_clients_firm_id", table_name="clients")
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE outbox SET (fillfactor = {OUTBOX_FILLFACTOR})")
    try:
        with conn.begin_nested():  # a server without lz4 must not abort the migration's transaction
            conn.exec_driver_sql("ALTER TABLE outbox ALTER COLUMN raw SET COMPRESSION lz4")
    except DBAPIError as exc:
        log.warning("PostgreSQL cannot compress the outbox's stored emails with lz4 (%s): they stay pglz",
                    str(exc.orig).strip().splitlines()[0])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE outbox ALTER COLUMN raw SET COMPRESSION DEFAULT")
        op.execute("ALTER TABLE outbox RESET (fillfactor)")
    op.create_index("ix_clients_firm_id", "clients", ["firm_id"], unique=False)
