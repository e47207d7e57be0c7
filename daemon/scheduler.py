"""The scheduler adapter: runs the domain's deadline sweeps.

Deadlines live in the database (expiry dates, trial ends, transfer windows),
not in memory, so a restart loses nothing; each sweep is idempotent, so a
second run (or a second instance) never sends a reminder twice.
"""

from __future__ import annotations

from collections import Counter

from daemon.app import Cabinet


class Scheduler:
    def __init__(self, cabinet: Cabinet) -> None:
        self._cabinet = cabinet

    def run_due(self) -> dict[str, int]:
        """Everything that is due now, once."""
        counts: Counter[str] = Counter()
        counts.update(self._cabinet.roster.expire_invitations())
        counts.update(self._cabinet.transfers.sweep())
        counts.update(self._cabinet.onboarding.sweep_trials())
        return dict(counts)
