"""Beat's Prometheus endpoint end to end: a real beat and worker, /metrics scraped over HTTP."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ductape_jobs import Ductape, JobStatus
from tests.support import Processes, free_port, wait_for

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(port: int, name: str, job_id: str, event: str, **extra: str) -> float | None:
    """One sample of one schedule's series, or None when the beat does not show it (yet)."""
    labels = {"job_id": job_id, "product_tag": "tests", "event": event, "env": "dev", **extra}
    return scrape(port).get((name, frozenset(labels.items())))


def leading(port: int) -> bool:
    try:
        return scrape(port).get(("ductape_beat_leader", frozenset())) == 1.0
    except OSError:
        return False  # not listening yet


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def test_beat_serves_per_schedule_released_missed_late_and_failed(
    procs: Processes, ductape: Ductape, env_prefix: str
) -> None:
    procs.worker()
    # Missed: a schedule whose first slots pass while no beat runs. When the beat starts it
    # releases the overdue run once, skips the slots since, and carries on from now.
    start_ms = time.time_ns() // 1_000_000 + 1_000
    missed = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        start_at=start_ms,
        retries=0,
        input={"case": "missed"},
        repeat={"every": 1000, "limit": 2},
    )
    wait_for(lambda: time.time_ns() // 1_000_000 > start_ms + 3_500, 10, "three slots to pass")

    port = free_port()
    beat = procs.beat(DUCTAPE_METRICS_PORT=str(port))
    wait_for(lambda: beat.poll() is not None or leading(port), 60, "the beat to lead and serve /metrics")
    assert beat.poll() is None, procs.log(beat)

    # Started a little ahead, so that beat (not schedule()) releases every run of these two.
    soon_ms = time.time_ns() // 1_000_000 + 1_500
    ok = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        start_at=soon_ms,
        retries=0,
        input={"case": "ok"},
        repeat={"every": 1000, "limit": 3},
    )
    failing = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="flaky",
        start_at=soon_ms,
        retries=0,
        input={"case": "failing"},
        repeat={"every": 1000, "limit": 2},
    )

    done = JobStatus.COMPLETED
    for handle in (ok, failing, missed):
        wait_for(lambda h=handle: ductape.job.get(h.job_id).status == done, 60, "the schedules to finish")
    released = "ductape_runs_released_total"
    assert sample(port, released, ok.job_id, "echo") == 3
    assert sample(port, released, failing.job_id, "flaky") == 2
    assert sample(port, released, missed.job_id, "echo") == 2  # skipped slots do not count toward limit

    # Each run is released once, each with its lateness observed.
    assert sample(port, "ductape_run_lateness_seconds_count", ok.job_id, "echo") == 3
    assert sample(port, "ductape_run_lateness_seconds_count", missed.job_id, "echo") == 2
    assert sample(port, "ductape_run_lateness_seconds_sum", missed.job_id, "echo") >= 3.5
    assert sample(port, "ductape_run_lateness_seconds_bucket", ok.job_id, "echo", le="+Inf") == 3

    # At least the three slots that passed before the beat started (more if it was slow to start).
    assert sample(port, "ductape_runs_missed_total", missed.job_id, "echo") >= 3
    assert sample(port, "ductape_runs_missed_total", ok.job_id, "echo") is not None  # 0 unless beat lagged

    # Failures happen on the worker, after release: wait until both runs failed for good.
    failed = "ductape_runs_failed_total"
    wait_for(lambda: sample(port, failed, failing.job_id, "flaky") == 2, 60, "2 failed runs")
    assert sample(port, failed, ok.job_id, "echo") == 0
    assert sample(port, failed, missed.job_id, "echo") == 0
    assert len(ductape.job.failed()) == 2  # the same two runs, dead-lettered
