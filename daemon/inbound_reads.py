"""What planning a batch of inbound replies reads, read for the whole batch at once.

Planning an ordinary reply's forward needs the email it answers, that email's
company, its firm and the firm's staff. Read per message, that was four
statements each: on PostgreSQL four round trips, on both databases four trips
through SQLAlchemy's execution layer, a quarter of processing. ``BatchReads``
reads them for all the batch's references in four statements (``prefetch``),
and a firm shared by many replies once. A lookup it has not prefetched (the
prefetch failed, or a caller asks for more) is read on its own, so what it
answers never depends on the prefetch: only the number of statements does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from sqlalchemy import Connection, Row, bindparam, select

from daemon.domain import told_staff
from daemon.models import Company, Firm, Membership, OutboxMessage, User

_ANSWERED_COLUMNS = (OutboxMessage.recipient, OutboxMessage.invitation_id, OutboxMessage.company_id,
                     OutboxMessage.firm_id, OutboxMessage.audience)
_ANSWERED = select(OutboxMessage.ref, *_ANSWERED_COLUMNS).where(
    OutboxMessage.ref.in_(bindparam("refs", expanding=True)))
_COMPANIES = select(Company.id, Company.name, Company.admin_email, Company.admin_name, Company.admin_locale,
                    Company.admin_timezone).where(Company.id.in_(bindparam("ids", expanding=True)))
_FIRMS = select(Firm.id, Firm.name).where(Firm.id.in_(bindparam("ids", expanding=True)))
# ``told_staff`` holds the rule (who of a firm hears about its clients); given the membership's own
# column it keeps the rule and leaves the choice of firms to the IN list.
_STAFF = (
    select(Membership.firm_id, User.email, User.name, User.locale, User.timezone)
    .select_from(User.__table__.join(Membership.__table__))
    .where(*told_staff(Membership.firm_id), Membership.firm_id.in_(bindparam("ids", expanding=True)))
    .order_by(Membership.firm_id, User.id)
)

# The rows of the four statements above, column for column.
Answered = Row[str, str, int | None, int | None, int | None, str | None]
CompanyRow = Row[int, str, str, str, str, str]
FirmRow = Row[int, str]
StaffRow = Row[int, str, str, str, str]


class BatchReads:
    """Memoised reads of one batch's planning, on the connection ``connection()`` gives (the batch's
    read session's: a call each time, since a failed statement's rollback replaces it)."""

    def __init__(self, connection: Callable[[], Connection]) -> None:
        self._connection = connection
        self._answered: dict[str, Answered | None] = {}
        self._companies: dict[int, CompanyRow | None] = {}
        self._firms: dict[int, FirmRow | None] = {}
        self._staff: dict[int, list[StaffRow]] = {}

    def prefetch(self, refs: Iterable[str]) -> None:
        """Read, in four statements, everything the replies to ``refs`` can need."""
        wanted = sorted(set(refs) - self._answered.keys())
        if not wanted:
            return
        found = {row.ref: row for row in self._connection().execute(_ANSWERED, {"refs": wanted})}
        for ref in wanted:
            self._answered[ref] = found.get(ref)
        rows = list(found.values())
        self._read_companies({row.company_id for row in rows if row.company_id is not None})
        firm_ids = {row.firm_id for row in rows if row.firm_id is not None}
        self._read_firms(firm_ids)
        self._read_staff(firm_ids)

    def answered(self, ref: str) -> Answered | None:
        """The email whose reply address holds ``ref``: its recipient, invitation, company, firm and audience."""
        if ref not in self._answered:
            self._answered[ref] = self._connection().execute(_ANSWERED, {"refs": [ref]}).one_or_none()
        return self._answered[ref]

    def company(self, company_id: int) -> CompanyRow | None:
        if company_id not in self._companies:
            self._read_companies({company_id})
        return self._companies[company_id]

    def firm(self, firm_id: int) -> FirmRow | None:
        if firm_id not in self._firms:
            self._read_firms({firm_id})
        return self._firms[firm_id]

    def staff(self, firm_id: int) -> list[StaffRow]:
        """Who of the firm's staff hears a forwarded reply, in account order."""
        if firm_id not in self._staff:
            self._read_staff({firm_id})
        return self._staff[firm_id]

    def _read_companies(self, ids: Collection[int]) -> None:
        wanted = sorted(set(ids) - self._companies.keys())
        if wanted:
            found = {row.id: row for row in self._connection().execute(_COMPANIES, {"ids": wanted})}
            self._companies.update({i: found.get(i) for i in wanted})

    def _read_firms(self, ids: Collection[int]) -> None:
        wanted = sorted(set(ids) - self._firms.keys())
        if wanted:
            found = {row.id: row for row in self._connection().execute(_FIRMS, {"ids": wanted})}
            self._firms.update({i: found.get(i) for i in wanted})

    def _read_staff(self, ids: Collection[int]) -> None:
        wanted = sorted(set(ids) - self._staff.keys())
        if wanted:
            for firm_id in wanted:
                self._staff[firm_id] = []
            for row in self._connection().execute(_STAFF, {"ids": wanted}):
                self._staff[row.firm_id].append(row)
