"""Prometheus metrics of the beat: per schedule, runs released, missed, late, failed and skipped.

Served on ``DUCTAPE_METRICS_ADDR``:``DUCTAPE_METRICS_PORT`` by the beat process. What the beat
itself does (releasing runs, skipping missed slots, lateness, setting entries aside) is counted
here from each tick's ``TickReport``; failed runs happen on workers, which count them on the job
record in Redis (FINISH_RUN), and slots skipped by ``repeat.overlap`` are counted there by the
claim script (any beat may have claimed them), so both are read from there: one pipelined round
trip per scrape, whatever the number of schedules. Per-task metrics (by event and worker) are Flower's own
``/metrics``.

Series stay bounded: a schedule's series leave once it has been finished or cancelled for
``DUCTAPE_METRICS_LINGER_S`` (so a last scrape sees its final counts), and with
``DUCTAPE_METRICS_PER_JOB=false`` series are per (product, event, env) only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from beat.engine import TickReport
from ductape_jobs import health, ops
from ductape_jobs.clock import now_ms
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

log = logging.getLogger("beat")

PER_JOB_LABELS = ("job_id", "product_tag", "event", "env")
GROUP_LABELS = ("product_tag", "event", "env")
LATENESS_BUCKETS_S = (0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0)
FINISHED = ("completed", "failed", "cancelled")
PRUNE_EVERY_MS = 300_000  # should nobody scrape for this long, a tick reads the states itself
Labels = tuple[str, ...]
Counts = tuple[int, int]  # a schedule's counts kept in Redis: failed runs, skipped slots


class BeatMetrics:
    """The beat's metrics registry, fed one tick report at a time."""

    def __init__(
        self,
        store: Store,
        is_leader: Callable[[], bool],
        settings: Settings,
        reports_redis: Callable[[], bool] | None = None,
        shards_led: Callable[[], Collection[int]] | None = None,
    ) -> None:
        self.store = store
        # Failed and skipped counts are reported for the schedules of the shards this beat leads
        # now, so a schedule whose shard moved to another beat is not reported by both.
        self.shards_led = shards_led
        self.settings = settings
        self.per_job = settings.metrics_per_job
        self.linger_ms = settings.metrics_linger_s * 1000
        labels = PER_JOB_LABELS if self.per_job else GROUP_LABELS
        self.registry = CollectorRegistry()
        # Registered first, so it is collected first: its read drops the series of ended
        # schedules before the other metrics are collected in the same scrape.
        self.registry.register(_FailedRuns(self))
        self.released = Counter(
            "ductape_runs_released",
            "Runs this beat released from the due index to Celery.",
            labels,
            registry=self.registry,
        )
        self.missed = Counter(
            "ductape_runs_missed",
            "Slots the misfire policy skipped (beat or workers were down past them).",
            labels,
            registry=self.registry,
        )
        self.lateness = Histogram(
            "ductape_run_lateness_seconds",
            "Time from a run's due time to its hand-over to Celery.",
            labels,
            buckets=LATENESS_BUCKETS_S,
            registry=self.registry,
        )
        self.set_aside = Counter(
            "ductape_entries_set_aside",
            "Due entries (source=due) and in-flight runs (source=lost) beat could not read or decide; "
            "each job failed with the reason ('ductape-jobs set-aside').",
            ("source",),
            registry=self.registry,
        )
        leader = Gauge("ductape_beat_leader", "1 while this beat leads a shard.", registry=self.registry)
        leader.set_function(lambda: 1.0 if is_leader() else 0.0)
        self.is_leader = is_leader
        # The recurring schedules this beat released, by job id: their labels, for the failed
        # counts read from Redis and for removing their series when they end.
        self._schedules: dict[str, Labels] = {}
        self._retired: dict[Labels, Counts] = {}  # counts of ended schedules, per group (no per-job)
        self._counts: dict[str, Counts] = {}  # the last counts read per schedule
        self._lock = threading.Lock()
        self._refreshed_ms = now_ms()  # the last read of the schedules' states
        # Redis memory and the records that left, from one beat only (shard 0's leader), so a
        # sum over the beats never counts them twice
        self.registry.register(HealthCollector(store, reports_redis or is_leader))

    def observe(self, report: TickReport) -> None:
        """Count what one tick released and set aside."""
        for release in report.releases:
            # One series per recurring schedule; one-off jobs share one per (product, event, env),
            # or every delayed one-off would leave a series behind.
            job_id = release.job_id if release.recurring else ""
            group = (release.product_tag, release.event, release.env)
            labels: Labels = (job_id, *group) if self.per_job else group
            self.released.labels(*labels).inc()
            self.missed.labels(*labels).inc(release.missed)
            self.lateness.labels(*labels).observe(release.lateness_ms / 1000)
            if job_id and job_id not in self._schedules:
                with self._lock:
                    self._schedules[job_id] = labels
        if report.set_aside:
            self.set_aside.labels("due").inc(len(report.set_aside))
        if report.runs_set_aside:
            self.set_aside.labels("lost").inc(report.runs_set_aside)
        at = now_ms()
        if at - self._refreshed_ms >= PRUNE_EVERY_MS:  # nobody scraped for that long
            self._refreshed_ms = at
            try:
                self.refresh(at)
            except BackendUnavailableError:
                log.warning("metrics: Redis is unreachable; series of ended schedules are kept for now")

    def serve(self) -> WSGIServer:
        """Serve ``/metrics`` on a daemon thread; returns the server (``shutdown()`` stops it)."""
        port = self.settings.metrics_port
        assert port is not None, "metrics are served only with DUCTAPE_METRICS_PORT set"
        server, _ = start_http_server(port, self.settings.metrics_addr, registry=self.registry)
        return server

    def refresh(self, at_ms: int) -> None:
        """Read every known schedule's counts and state (one round trip), and drop the series of
        those that ended at least linger ago."""
        self._refreshed_ms = at_ms
        with self._lock:
            known = list(self._schedules.items())
        states = self.store.run(ops.beat.schedule_states(self.store.keys, [job_id for job_id, _ in known]))
        with self._lock:
            for (job_id, labels), state in zip(known, states, strict=True):
                counts = (
                    self._counts.get(job_id, (0, 0))
                    if state is None
                    else (state.failed_runs, state.skipped_slots)
                )
                ended = state is None or (
                    state.status in FINISHED and at_ms - state.updated_ms >= self.linger_ms
                )
                if not ended:
                    self._counts[job_id] = counts
                    continue
                self._schedules.pop(job_id, None)
                self._counts.pop(job_id, None)
                if self.per_job:
                    for metric in (self.released, self.missed, self.lateness):
                        _remove(metric, labels)
                else:
                    self._retired[labels] = _add(self._retired.get(labels, (0, 0)), counts)

    def failed_counts(self) -> dict[Labels, Counts]:
        """(failed runs, skipped slots) by series: per schedule, or per group with the ended ones
        included."""
        led = None if self.shards_led is None else set(self.shards_led())
        keys = self.store.keys

        def ours(job_id: str) -> bool:
            return led is None or keys.shard_of(job_id) in led

        with self._lock:
            if self.per_job:
                return {
                    self._schedules[j]: n for j, n in self._counts.items() if j in self._schedules and ours(j)
                }
            counts = dict(self._retired)
            for job_id, n in self._counts.items():
                labels = self._schedules.get(job_id)
                if labels is not None and ours(job_id):
                    counts[labels] = _add(counts.get(labels, (0, 0)), n)
            return counts


def _add(a: Counts, b: Counts) -> Counts:
    return a[0] + b[0], a[1] + b[1]


def _remove(metric: Counter | Histogram, labels: Labels) -> None:
    with contextlib.suppress(KeyError):  # never observed under these labels
        metric.remove(*labels)


class _FailedRuns(Collector):
    """``ductape_runs_failed_total`` and ``ductape_slots_skipped_total`` of the schedules this
    beat released, read from Redis."""

    def __init__(self, metrics: BeatMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        family = CounterMetricFamily(
            "ductape_runs_failed",
            "Runs of a schedule that failed after their last retry (counted by workers in Redis).",
            labels=PER_JOB_LABELS if metrics.per_job else GROUP_LABELS,
        )
        skipped = CounterMetricFamily(
            "ductape_slots_skipped",
            "Slots of a schedule that repeat.overlap skipped while its previous run was unfinished.",
            labels=PER_JOB_LABELS if metrics.per_job else GROUP_LABELS,
        )
        # Only the leader reports the Redis counts, so summing over all beats never counts twice.
        if metrics.is_leader():
            try:
                metrics.refresh(now_ms())
            except BackendUnavailableError:
                log.warning(
                    "metrics: Redis is unreachable; ductape_runs_failed_total shows the last counts read"
                )
            for labels, (failed, skips) in metrics.failed_counts().items():
                family.add_metric(list(labels), failed)
                skipped.add_metric(list(labels), skips)
        yield family
        yield skipped


class HealthCollector(Collector):
    """Redis memory, eviction policy and the lifecycle counters (beat/health.py's watch, as
    metrics), read at scrape time in three round trips (leader only, so summing over beats never
    counts twice)."""

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
