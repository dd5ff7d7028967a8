"""Beat's Prometheus endpoint end to end: a real beat and worker, /metrics scraped over HTTP."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from ductape_jobs import Ductape, JobStatus
from tests.e2e.test_cli import run_cli
from tests.handlers import calls_key
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


def test_a_poison_entry_is_set_aside_while_the_others_run_and_ended_schedules_leave_the_metrics(
    procs: Processes, ductape: Ductape, env_prefix: str, redis_url: str, r: redis.Redis
) -> None:
    procs.worker()
    port = free_port()
    beat = procs.beat(DUCTAPE_METRICS_PORT=str(port), DUCTAPE_METRICS_LINGER_S="0")
    wait_for(lambda: beat.poll() is not None or leading(port), 60, "the beat to lead and serve /metrics")
    assert beat.poll() is None, procs.log(beat)

    soon_ms = time.time_ns() // 1_000_000 + 4_000
    every = {"every": 1000}
    healthy = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", start_at=soon_ms, input={"case": "healthy"},
        repeat={**every, "limit": 3, "overlap": "allow"},  # each slot runs, even behind a slow one
    )  # fmt: skip
    poisoned = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", start_at=soon_ms, input={"case": "poison"}, repeat=every
    )
    cancelled = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", start_at=soon_ms, input={"case": "cancel"}, repeat=every
    )
    # A zone the producer's tzdata knew and this beat's does not: written as beat would find it.
    job_key = f"{env_prefix}:job:{poisoned.job_id}"
    r.hset(job_key, mapping={"cron": "* * * * * *", "tz": "Mars/Olympus"})  # jobfields.py's fields
    r.hdel(job_key, "every")

    done = JobStatus.COMPLETED
    wait_for(lambda: ductape.job.get(healthy.job_id).status == done, 60, "the healthy schedule to finish")

    def ran() -> list[int]:
        return sorted(int(k.decode().rsplit(":", 1)[1]) for k in r.hkeys(calls_key("echo") + ":runs")
                      if k.decode().startswith(healthy.job_id))  # fmt: skip

    # A schedule is completed once its last run is handed over; that run may still be running.
    wait_for(lambda: len(ran()) >= 3, 60, "the healthy schedule's last run")
    assert ran() == [soon_ms, soon_ms + 1000, soon_ms + 2000]  # each slot ran, none skipped
    job = ductape.job.get(poisoned.job_id)
    assert job.status == JobStatus.FAILED and "Mars/Olympus" in (job.last_error or "")
    assert f"j:{poisoned.job_id}" not in {m.decode() for m in r.zrange(f"{env_prefix}:due", 0, -1)}

    set_aside = ("ductape_entries_set_aside_total", frozenset({("source", "due")}))
    wait_for(lambda: scrape(port).get(set_aside) == 1, 30, "the set-aside entry to be counted")
    listed = run_cli(redis_url, env_prefix, "set-aside --json")
    assert listed.returncode == 0, listed.stderr
    assert [(a["job_id"], "Mars/Olympus" in a["reason"]) for a in json.loads(listed.stdout)] == [
        (poisoned.job_id, True)
    ]
    doctor = run_cli(redis_url, env_prefix, "doctor --json")
    [check] = [c for c in json.loads(doctor.stdout)["checks"] if c["check"] == "set aside"]
    assert check["status"] == "warn" and poisoned.job_id in check["detail"]

    # Ended schedules leave the metrics (linger 0): the finished one now, the cancelled one once
    # cancelled; the released counts of both were there while they ran.
    released = "ductape_runs_released_total"
    wait_for(lambda: (sample(port, released, cancelled.job_id, "echo") or 0) >= 1, 30, "a cancelled run")
    ductape.job.cancel(cancelled.job_id)
    for handle in (healthy, cancelled):
        wait_for(
            lambda h=handle: not any(("job_id", h.job_id) in labels for _, labels in scrape(port)),
            30,
            "the ended schedule's series to go",
        )
    assert scrape(port).get(("ductape_beat_leader", frozenset())) == 1.0
