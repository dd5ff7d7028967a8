"""Beat's /metrics stays bounded: served over HTTP from a BeatMetrics over real Redis, fed tick
reports as the beat feeds them. Ended schedules' series leave, a scrape costs the same few round
trips for 5 schedules or 500, per-job labels can be turned off, the address is a setting."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from beat.engine import Release, TickReport
from beat.metrics import BeatMetrics
from ductape_jobs import Ductape
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from tests.support import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends: one send per round trip (a pipeline is one)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted_store(settings: Settings) -> Iterator[Store]:
    pool = redis.ConnectionPool.from_url(settings.url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield Store(client, Keys(settings.key_prefix))
    client.close()


def metrics_for(store: Store, settings: Settings, **overrides: Any) -> BeatMetrics:
    tuned = settings.replace(**{"metrics_port": free_port(), **overrides})
    metrics = BeatMetrics(store, lambda: True, tuned)
    server = metrics.serve()
    metrics.server = server  # type: ignore[attr-defined]
    return metrics


def scrape(metrics: BeatMetrics, host: str = "127.0.0.1") -> Samples:
    port = metrics.settings.metrics_port
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def released(job_ids: list[str], event: str = "echo") -> TickReport:
    report = TickReport(leader=True)
    report.releases = [Release(j, "tests", event, "dev", True, 10, 0) for j in job_ids]
    return report


def schedules(ductape: Ductape, n: int, event: str = "echo") -> list[str]:
    requests = [
        {"env": "dev", "product_tag": "tests", "event": event, "input": {"n": i}, "repeat": {"every": 60_000}}
        for i in range(n)
    ]
    return [h.job_id for h in ductape.job.schedule_many(requests)]


def counted(ductape: Ductape, metrics: BeatMetrics, field: str, counts: tuple[int, ...]) -> list[str]:
    """Schedules released by this beat, each with ``field`` of its job record set to its count."""
    jobs = schedules(ductape, len(counts))
    metrics.observe(released(jobs))
    for job_id, count in zip(jobs, counts, strict=True):
        ductape.store.redis.hset(ductape.store.keys.job(job_id), field, count)
    return jobs


def series_of(samples: Samples, job_id: str) -> list[str]:
    return sorted(name for name, labels in samples if ("job_id", job_id) in labels)


def test_a_scrape_costs_the_same_few_round_trips_for_5_schedules_or_500(
    counted_store: Store, settings: Settings, ductape: Ductape
) -> None:
    metrics = metrics_for(counted_store, settings)
    try:
        counted_store.redis.ping()  # connects (the handshake is not a scrape's cost)
        costs = []
        for n in (5, 500):
            metrics.observe(released(schedules(ductape, n)))
            before = CountingConnection.sends
            samples = scrape(metrics)
            costs.append(CountingConnection.sends - before)
            assert sum(1 for name, _ in samples if name == "ductape_runs_failed_total") == len(
                metrics._schedules
            )
        # One for the schedules' states and failed counts, three for Redis's health (beat.health).
        assert costs[0] == costs[1] <= 4, costs
    finally:
        metrics.server.shutdown()  # type: ignore[attr-defined]


def test_series_of_finished_and_cancelled_schedules_go_away(ductape: Ductape, settings: Settings) -> None:
    store = ductape.store
    metrics = metrics_for(store, settings, metrics_linger_s=0)
    try:
        live, cancelled, finished = schedules(ductape, 3)
        metrics.observe(released([live, cancelled, finished]))
        assert all(series_of(scrape(metrics), j) for j in (live, cancelled, finished))
        ductape.job.cancel(cancelled)
        store.redis.hset(store.keys.job(finished), "status", "completed")  # as its last claim leaves it
        samples = scrape(metrics)
        assert series_of(samples, cancelled) == series_of(samples, finished) == []
        assert "ductape_runs_released_total" in series_of(samples, live)
        assert set(metrics._schedules) == {live}
        # Gone from Redis altogether (retention): gone from the metrics too.
        store.redis.delete(store.keys.job(live))
        assert series_of(scrape(metrics), live) == [] and metrics._schedules == {}
    finally:
        metrics.server.shutdown()  # type: ignore[attr-defined]


def test_an_ended_schedule_keeps_its_series_while_it_lingers(ductape: Ductape, settings: Settings) -> None:
    store = ductape.store
    metrics = metrics_for(store, settings)  # the default: 300 s, for a last scrape to see them
    try:
        [job_id] = schedules(ductape, 1)
        metrics.observe(released([job_id]))
        ductape.job.cancel(job_id)
        assert "ductape_runs_released_total" in series_of(scrape(metrics), job_id)
    finally:
        metrics.server.shutdown()  # type: ignore[attr-defined]


def test_without_per_job_labels_series_are_per_product_event_env_and_failed_counts_stay(
    ductape: Ductape, settings: Settings
) -> None:
    store = ductape.store
    metrics = metrics_for(store, settings, metrics_per_job=False, metrics_linger_s=0)
    try:
        jobs = counted(ductape, metrics, "failed_runs", (2, 1, 0))
        metrics.observe(released(jobs[:1]))
        group = frozenset({"product_tag": "tests", "event": "echo", "env": "dev"}.items())
        samples = scrape(metrics)
        assert not any(("job_id", j) in labels for _, labels in samples for j in jobs)
        assert samples[("ductape_runs_released_total", group)] == 4
        assert samples[("ductape_runs_failed_total", group)] == 3
        # One ends: its failed runs still count (a counter never goes down), and no series grew.
        ductape.job.cancel(jobs[0])
        samples = scrape(metrics)
        assert samples[("ductape_runs_failed_total", group)] == 3
        assert {labels for name, labels in samples if name.startswith("ductape_runs_")} == {group}
    finally:
        metrics.server.shutdown()  # type: ignore[attr-defined]


def test_the_listen_address_is_a_setting_and_defaults_to_loopback(
    ductape: Ductape, settings: Settings
) -> None:
    store = ductape.store
    assert Settings().metrics_addr == "127.0.0.1"
    assert Settings.from_env({"DUCTAPE_METRICS_ADDR": "0.0.0.0"}).metrics_addr == "0.0.0.0"
    default = metrics_for(store, settings)
    other = metrics_for(store, settings, metrics_addr="127.0.0.2")
    try:
        assert default.server.server_address[0] == "127.0.0.1"  # type: ignore[attr-defined]
        assert ("ductape_beat_leader", frozenset()) in scrape(other, "127.0.0.2")
        with pytest.raises(OSError):
            scrape(other, "127.0.0.1")  # listening on 127.0.0.2 only
    finally:
        default.server.shutdown()  # type: ignore[attr-defined]
        other.server.shutdown()  # type: ignore[attr-defined]


@pytest.mark.parametrize("per_job", [True, False])
def test_slots_skipped_by_overlap_are_read_from_redis_under_the_same_bounded_labels(
    ductape: Ductape, settings: Settings, per_job: bool
) -> None:
    metrics = metrics_for(ductape.store, settings, metrics_per_job=per_job, metrics_linger_s=0)
    try:
        jobs = counted(ductape, metrics, "skipped_slots", (3, 1))  # CLAIM_DUE counts them there
        group = {"product_tag": "tests", "event": "echo", "env": "dev"}
        samples = scrape(metrics)
        name = "ductape_slots_skipped_total"
        if per_job:
            assert [samples[(name, frozenset({**group, "job_id": j}.items()))] for j in jobs] == [3, 1]
        else:
            assert samples[(name, frozenset(group.items()))] == 4
        ductape.job.cancel(jobs[0])  # an ended schedule's series leave (linger 0); a group keeps its count
        samples = scrape(metrics)
        skipped = {labels: v for (n, labels), v in samples.items() if n == name}
        if per_job:
            assert skipped == {frozenset({**group, "job_id": jobs[1]}.items()): 1}
        else:
            assert skipped == {frozenset(group.items()): 4}
    finally:
        metrics.server.shutdown()  # type: ignore[attr-defined]
