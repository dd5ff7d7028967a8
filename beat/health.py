"""Beat's watch on Redis: eviction policy, memory headroom and vanished records, while it runs.

``RedisWatch`` re-checks every HEALTH_EVERY_MS (not only at start-up) and logs a warning for an
evicting policy, memory near maxmemory, or records that vanished since the last look.
beat/metrics.py's ``HealthCollector`` serves the same figures as Prometheus metrics.
"""

from __future__ import annotations

import logging

from ductape_jobs import health, ops
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.store import Store

log = logging.getLogger("beat")

HEALTH_EVERY_MS = 30_000


class RedisWatch:
    """Re-checks Redis's eviction policy and memory headroom, and counts vanished records."""

    def __init__(self, store: Store, every_ms: int = HEALTH_EVERY_MS) -> None:
        self.store = store
        self.every_ms = every_ms
        self._next_ms = 0
        self._vanished_seen: int | None = None

    def check(self, now_ms: int) -> list[health.Verdict] | None:
        """Look when it is time (None otherwise); the problems found, each logged."""
        if now_ms < self._next_ms:
            return None
        self._next_ms = now_ms + self.every_ms
        try:
            verdicts = [
                health.eviction_verdict(self.store.run(ops.beat.eviction_policy())),
                health.memory_verdict(self.store.run(ops.beat.memory())),
            ]
            counters = self.store.run(ops.beat.counters(self.store.keys))
        except BackendUnavailableError:
            return None  # the tick says so already
        vanished = sum(counters.get(name, 0) for name in health.VANISHED)
        if vanished > (self._vanished_seen or 0):  # at start-up: any ever counted
            verdicts.append(health.records_verdict(counters))
        self._vanished_seen = vanished
        problems = [v for v in verdicts if v.status == "warn"]
        for problem in problems:
            log.warning("Redis: %s; fix: %s", problem.detail, problem.fix)
        return problems
