"""The scheduler adapter: runs the domain's deadline sweeps.

Deadlines live in the database (expiry dates, trial ends, transfer windows),
not in memory, so a restart loses nothing; each sweep is idempotent, so a
second run (or a second instance) never sends a reminder twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from daemon.app import Cabinet

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, cabinet: Cabinet, interval: float) -> None:
        self._cabinet = cabinet
        self._interval = interval

    def run_due(self) -> dict[str, int]:
        """Everything that is due now, once."""
        counts: Counter[str] = Counter()
        counts.update(self._cabinet.roster.expire_invitations())
        counts.update(self._cabinet.transfers.sweep())
        counts.update(self._cabinet.onboarding.sweep_trials())
        return dict(counts)

    async def run(self) -> None:
        while True:
            try:
                counts = await asyncio.to_thread(self.run_due)
                if any(counts.values()):
                    log.info("scheduled jobs: %s", ", ".join(f"{k}={v}" for k, v in counts.items() if v))
                    self._cabinet.worker.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled jobs failed; retrying at the next interval")
            await asyncio.sleep(self._interval)
