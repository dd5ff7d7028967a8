"""Beat's watch on Redis: eviction policy, memory headroom and vanished records, while it runs.

``RedisWatch`` re-checks every HEALTH_EVERY_MS (not only at start-up) and logs a warning for an
evicting policy, memory near maxmemory, or records that vanished since the last look.
``HealthCollector`` serves the same figures as Prometheus metrics, read at scrape time in three
round trips (leader only, so summing over beats never counts twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class HealthCollector(Collector):
    """Redis memory, eviction policy and the lifecycle counters, read at scrape time."""

    def __init__(self, store: Store, is_leader: Callable[[], bool]) -> None:
        self.store = store
        self.is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        if not self.is_leader():
            return
        try:
            policy = self.store.run(ops.beat.eviction_policy())
            memory = self.store.run(ops.beat.memory())
            counters = self.store.run(ops.beat.counters(self.store.keys))
        except BackendUnavailableError:
            log.warning("metrics: Redis is unreachable; its memory and record counts left out of this scrape")
            return
        if memory is not None:
            used, maxmemory = memory
            yield GaugeMetricFamily("ductape_redis_used_memory_bytes", "Redis used_memory.", value=used)
            yield GaugeMetricFamily(
                "ductape_redis_maxmemory_bytes", "Redis maxmemory (0: no limit).", value=maxmemory
            )
        if policy is not None:
            safe = 1.0 if health.eviction_safe(policy) else 0.0
            yield GaugeMetricFamily(
                "ductape_redis_eviction_safe", "1 when maxmemory-policy cannot evict schedules.", value=safe
            )
        yield CounterMetricFamily(
            "ductape_jobs_expired",
            "Finished jobs removed after their retention, with their runs.",
            value=counters.get("jobs_expired", 0),
        )
        yield CounterMetricFamily(
            "ductape_dead_letters_dropped",
            "Dead letters dropped past DUCTAPE_DEAD_RETENTION_S or beyond DUCTAPE_DEAD_MAX.",
            value=counters.get("dead_dropped", 0),
        )
        vanished = CounterMetricFamily(
            "ductape_records_vanished",
            "Records gone before their time (evicted or deleted): due entries, runs, jobs.",
            labels=["record"],
        )
        for name, record in health.VANISHED.items():
            vanished.add_metric([record], counters.get(name, 0))
        yield vanished
