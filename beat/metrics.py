"""Prometheus metrics of the beat: per schedule, runs released, missed, late and failed.

Served on ``DUCTAPE_METRICS_PORT`` by the beat process. What the beat itself does (releasing runs,
skipping missed slots, lateness) is counted here from each tick's ``TickReport``; failed runs happen
on workers, which count them on the job record in Redis (FINISH_RUN), so they are read from there
at scrape time. Per-task metrics (by event and worker) are Flower's own ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from beat.engine import TickReport
from beat.health import HealthCollector
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.store import Store

log = logging.getLogger("beat")

LABELS = ("job_id", "product_tag", "event", "env")
LATENESS_BUCKETS_S = (0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0)
Labels = tuple[str, str, str, str]


class BeatMetrics:
    """The beat's metrics registry, fed one tick report at a time."""

    def __init__(self, store: Store, is_leader: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        self.released = Counter(
            "ductape_runs_released",
            "Runs this beat released from the due index to Celery.",
            LABELS,
            registry=self.registry,
        )
        self.missed = Counter(
            "ductape_runs_missed",
            "Slots the misfire policy skipped (beat or workers were down past them).",
            LABELS,
            registry=self.registry,
        )
        self.lateness = Histogram(
            "ductape_run_lateness_seconds",
            "Time from a run's due time to its hand-over to Celery.",
            LABELS,
            buckets=LATENESS_BUCKETS_S,
            registry=self.registry,
        )
        leader = Gauge("ductape_beat_leader", "1 while this beat leads.", registry=self.registry)
        leader.set_function(lambda: 1.0 if is_leader() else 0.0)
        self._schedules: dict[str, Labels] = {}
        self._lock = threading.Lock()
        self.registry.register(_FailedRuns(store, self._known, is_leader))
        self.registry.register(HealthCollector(store, is_leader))  # Redis memory, records that left

    def observe(self, report: TickReport) -> None:
        """Count what one tick released."""
        for release in report.releases:
            # One series per recurring schedule; one-off jobs share one per (product, event, env),
            # or every delayed one-off would leave a series behind.
            job_id = release.job_id if release.recurring else ""
            labels: Labels = (job_id, release.product_tag, release.event, release.env)
            self.released.labels(*labels).inc()
            self.missed.labels(*labels).inc(release.missed)
            self.lateness.labels(*labels).observe(release.lateness_ms / 1000)
            if job_id and job_id not in self._schedules:
                with self._lock:
                    self._schedules[job_id] = labels

    def serve(self, port: int, addr: str = "0.0.0.0") -> WSGIServer:
        """Serve ``/metrics`` on a daemon thread; returns the server (``shutdown()`` stops it)."""
        server, _ = start_http_server(port, addr, registry=self.registry)
        return server

    def _known(self) -> list[tuple[str, Labels]]:
        with self._lock:
            return list(self._schedules.items())


class _FailedRuns(Collector):
    """``ductape_runs_failed_total`` of the schedules this beat released, read from Redis."""

    def __init__(
        self, store: Store, known: Callable[[], list[tuple[str, Labels]]], is_leader: Callable[[], bool]
    ) -> None:
        self.store = store
        self.known = known
        self.is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "ductape_runs_failed",
            "Runs of a schedule that failed after their last retry (counted by workers in Redis).",
            labels=LABELS,
        )
        # Only the leader reports the Redis counts, so summing over all beats never counts twice.
        schedules = self.known() if self.is_leader() else []
        try:
            counts = self.store.failed_runs([job_id for job_id, _ in schedules])
        except BackendUnavailableError:
            log.warning("metrics: Redis is unreachable; ductape_runs_failed_total left out of this scrape")
            counts = []
        for (_, labels), count in zip(schedules, counts, strict=False):
            if count is not None:  # None: the job record is gone
                family.add_metric(list(labels), count)
        yield family
