"""a link's first opening kept once on PostgreSQL: a partial UNIQUE index on the opening's identity

``daemon.link_opens`` appends one ``link.opened`` event per link, guarded by ``NOT EXISTS`` in the
statement itself. SQLite has one writer, so the second of two first openings at once sees the first
and writes nothing. On PostgreSQL (READ COMMITTED) two transactions at the same instant (two
instances, or two of one instance's writer threads) each see no row and both insert: the event log
then counts the opening twice. From here the database refuses the second: a UNIQUE index on
``(company_id, md5(detail)) WHERE kind = 'link.opened'``, and the insert says ``ON CONFLICT … DO
NOTHING`` against it (the later transaction waits for the earlier one, then writes nothing).

- ``detail`` is the opening's canonical text (``link_opens.detail_text``: sorted JSON of the purpose
  and the ids, under 100 bytes for every row ever written), but the column is unbounded TEXT and
  PostgreSQL refuses B-tree entries over about 2.7 KB: its md5 is indexed, 16 bytes whatever the
  text. No read filters on ``md5(detail)``, so no read can use it: the page's "opened already?" keeps
  ``ix_events_company_kind`` (0018) whatever the plan (an index on ``detail`` itself would offer a
  prepared statement that binds the kind a custom plan of its own on every execution).
- First, the duplicates already there go: per company and detail, the earliest opening (by ``at``,
  then ``id``) stays: its time is when the link was first opened. Nothing
  references an event's id (no foreign key names ``events``), so no other row changes. Openings
  without a company (none is written so) are neither removed nor constrained: NULLs are distinct.
- The table is locked against writes (reads go on) from the deletion to the index's creation, so an
  instance still running the previous code cannot add a duplicate in between.
- SQLite: nothing. Its single writer already keeps one opening per link (the statement's own
  ``NOT EXISTS`` is checked under the write), SQLite has no ``md5()`` (an index on an application
  function would make the file unwritable to a plain ``sqlite3`` shell), and a partial index on
  ``kind = 'link.opened'`` there makes SQLite re-prepare every statement that binds the kind at each
  execution: with ``UNIQUE (company_id, detail) WHERE kind = 'link.opened'`` the link page's read plus
  the insert of an opening already recorded (in a transaction of its own) took 631k instructions
  instead of 117k under callgrind, 520k of them in ``sqlite3Reprepare`` (README, "Measured and
  dropped"). The index is outside ``daemon/models.py`` for that reason (``tests/test_migrations.py``
  checks it here).

The downgrade drops the index; the duplicates removed are not put back (they were copies).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

INDEX = "uq_events_link_opened"
OPENING = "company_id, md5(detail)"
FIRST_OPENINGS = "kind = 'link.opened'"

# Every opening after its link's earliest (the row numbered 1 stays).
REMOVE_LATER_OPENINGS = f"""DELETE FROM events WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY company_id, detail ORDER BY at, id) AS n
        FROM events WHERE {FIRST_OPENINGS} AND company_id IS NOT NULL
    ) AS openings WHERE n > 1
)"""


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    # SHARE ROW EXCLUSIVE: no INSERT (ROW EXCLUSIVE) until the index is there; SELECTs go on.
    conn.exec_driver_sql("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
    conn.exec_driver_sql(REMOVE_LATER_OPENINGS)
    conn.exec_driver_sql(f"CREATE UNIQUE INDEX {INDEX} ON events ({OPENING}) WHERE {FIRST_OPENINGS}")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql(f"DROP INDEX {INDEX}")
