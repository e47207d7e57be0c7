"""events' firm_id-only index goes: no query reads events by firm alone, and every event written updated it

``ix_events_firm_id (firm_id)`` was made with the table, for a client page's history by firm. Every
query on ``events`` today starts from something narrower, which the other indexes answer:

- the client page's history (``daemon.workspace``): ``client_id = ? OR (company_id = ? AND (firm_id IS
  NULL OR firm_id = ?))``: ``ix_events_client_id`` and ``ix_events_company_kind``, the firm a filter;
- ``cabinet link explain`` (``daemon.links_explained``): by company (and kind), the firm a filter; a
  staff link's events (``firm_id IS NULL AND company_id IS NULL AND kind IN …``) by
  ``ix_events_company_kind``'s ``company_id IS NULL`` and kind;
- the first openings (``daemon.link_opens``, the workspace, the invitations' delivery states), the
  rate limits (``password_resets``, ``new_accounts``, ``company_admin``): by kind and company;
- retention, metrics and the exports do not read events.

``EXPLAIN`` (SQLite's ``QUERY PLAN`` and PostgreSQL's, 60,000 events over 2,000 companies and 20
firms): without this index every query has an index of the above. With it, two plans chose it where it
reads more: on SQLite without statistics (Cabinet runs no ``ANALYZE``), ``cabinet link explain``'s
transfer link (``company_id = ? AND firm_id = ? AND kind LIKE 'transfer.%'``) and staff link (``firm_id
IS NULL AND company_id IS NULL AND kind …``) searched it by firm: all the firm's events (or every event
without a firm), where ``ix_events_company_kind`` reads the company's (or the staff kinds'); on
PostgreSQL (analysed) one plan of the staff link's ANDed its bitmap with ``ix_events_company_kind``'s,
which answers that query alone. Analysed, SQLite's plans are the same with and without it. No foreign
key check needs it either: firms are never deleted.

Every event written (an accept writes one, so does each first opening and each reply) no longer adds an
entry to it: events keep 4 indexes on PostgreSQL (5 before) and 2 on SQLite (3 before; its primary key
is the rowid). Only an index: no table is rebuilt, so 0015/0017's triggers are untouched.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_events_firm_id", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_firm_id", "events", ["firm_id"], unique=False)
