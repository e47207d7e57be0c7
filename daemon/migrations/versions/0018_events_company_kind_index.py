"""the link page's "opened already?": events indexed by company and kind, in place of company alone

Every invitation link's page asks in its one read whether the link's ``link.opened`` event is there
(``daemon.link_opens.opened_before``: an ``EXISTS`` on the company, the kind and the detail). With
``ix_events_company_id`` SQLite read every event of the company and each one's row (three at the
link bench; a company with a long history has many more). By company and kind it reads only the
company's first openings (one per kind of link opened), each row's detail compared.

It replaces ``ix_events_company_id``: its prefix serves every lookup by company, so an event's
insert still maintains three indexes. Not the detail in the index: at 1,000 companies it saved no
instruction more (one row read either way), and PostgreSQL refuses a B-tree entry over about 2.7 KB.
Not a partial index on the first openings either: SQLite re-plans every statement that binds
``events.kind = ?`` against a partial index on ``kind`` at each execution, six times the page's read.

Only indexes: no table is rebuilt, so 0015/0017's triggers are untouched.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_company_kind", "events", ["company_id", "kind"], unique=False)
    op.drop_index("ix_events_company_id", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_company_id", "events", ["company_id"], unique=False)
    op.drop_index("ix_events_company_kind", table_name="events")
