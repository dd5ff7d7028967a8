"""Attempts end for good: timeouts, the hard time limit, dead pool processes, long runs, async handlers.

Each test runs real celery workers (and a beat where resending could happen) and asserts on what
the handlers recorded and what Redis holds.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

# beat's lost-run sweep looks every 0.75 s at runs unmoved for 3 s, and kombu puts held messages
# back after 3 s: whatever could send a run again is active during these tests.
EAGER_RESEND = {"DUCTAPE_VISIBILITY_TIMEOUT_S": "3", "DUCTAPE_BEAT_LOCK_TTL_MS": "1500"}


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def started(r: redis.Redis, name: str, run_id: str) -> int:
    """How many times handler ``name`` started ``run_id``."""
    return sum(1 for x in r.lrange(calls_key(name) + ":started", 0, -1) if x.decode() == run_id)


def finished(ductape: Ductape, job_id: str, status: JobStatus, timeout_s: float = 60):
    """Wait until the job reaches ``status``."""
    return wait_for(
        lambda: (job := ductape.job.get(job_id)).status == status and job, timeout_s, f"job {status.value}"
    )


def settled(r: redis.Redis, prefix: str, run_id: str) -> bool:
    """Nothing can send the run again: it is out of the in-flight index and no queue, no worker's
    prefetch and no retry holds a message for it (beat sends only what is in flight or due)."""
    if r.zscore(f"{prefix}:inflight", run_id) is not None or r.zscore(f"{prefix}:due", f"r:{run_id}"):
        return False
    for key in r.scan_iter(match=f"{prefix}:broker:*"):
        kind = r.type(key)
        values = r.lrange(key, 0, -1) if kind == b"list" else r.hvals(key) if kind == b"hash" else []
        if any(run_id.encode() in v for v in values):
            return False
    return True


def only_run(ductape: Ductape, job_id: str):
    [run] = ductape.job.runs(job_id)
    return run


def test_a_handler_past_its_timeout_fails_the_attempt_and_retries_then_dead_letters_once(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    procs.beat(**EAGER_RESEND)
    procs.worker(concurrency=2, **EAGER_RESEND)
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="slow", retries=1, timeout=1, input={"seconds": 30}
    )
    finished(ductape, handle.job_id, JobStatus.FAILED)
    run = only_run(ductape, handle.job_id)
    wait_for(lambda: settled(r, env_prefix, run.run_id), 60, "nothing left that could send the run again")

    assert started(r, "slow", run.run_id) == 2  # retries=1: exactly two attempts
    assert r.llen(calls_key("slow")) == 0  # neither got past its sleep
    run = only_run(ductape, handle.job_id)
    assert run.status == RunStatus.FAILED and run.attempts == 2
    assert run.error is not None and run.error.startswith("JobTimeoutError: timed out after 1 s")
    assert [d.run_id for d in ductape.job.failed()] == [run.run_id]
    assert int(r.hget(f"{env_prefix}:job:{handle.job_id}", "failed_runs")) == 1


def test_the_hard_time_limit_counts_an_attempt_and_dead_letters_once_without_resending(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    procs.beat(**EAGER_RESEND)
    worker = procs.worker(concurrency=1, **EAGER_RESEND)
    # timeout 1 s: the handler swallows the timeout and is killed at the hard limit (2 s)
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="stubborn", retries=0, timeout=1, input={"seconds": 12}
    )
    finished(ductape, handle.job_id, JobStatus.FAILED)
    run = only_run(ductape, handle.job_id)
    wait_for(lambda: settled(r, env_prefix, run.run_id), 60, "nothing left that could send the run again")

    assert started(r, "stubborn", run.run_id) == 1
    assert r.lrange(calls_key("stubborn") + ":ignored", 0, -1) == [run.run_id.encode()]
    assert r.llen(calls_key("stubborn")) == 0  # killed before it could finish
    run = only_run(ductape, handle.job_id)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert run.error is not None and run.error.startswith("time limit exceeded")
    assert [d.run_id for d in ductape.job.failed()] == [run.run_id]
    assert worker.poll() is None  # the worker lives on; only its pool process was replaced


def test_a_run_alive_for_several_leases_is_never_started_twice(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    # A 1 s lease renewed by the heartbeat; the run takes 6 s, past six leases and past the 3 s
    # visibility timeout (kombu hands its message out again while it runs).
    fast = {**EAGER_RESEND, "DUCTAPE_RUN_LEASE_S": "1"}
    procs.beat(**fast)
    procs.worker(concurrency=2, **fast)
    procs.worker(concurrency=2, **fast)
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="slow", input={"seconds": 6})
    finished(ductape, handle.job_id, JobStatus.COMPLETED)
    run = only_run(ductape, handle.job_id)
    wait_for(lambda: settled(r, env_prefix, run.run_id), 60, "every copy of the message to be gone")

    assert started(r, "slow", run.run_id) == 1
    assert run.attempts == 1 and run.status == RunStatus.COMPLETED


def test_a_run_whose_pool_process_was_killed_runs_again_without_waiting_out_its_lease(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    # Default lease (60 s) and visibility timeout (1 h): only the worker's report of its lost
    # pool process can bring the run back within the deadline below.
    worker = procs.worker(concurrency=1)
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="slow", retries=1, input={"seconds": 3}
    )
    run_id = r.hget(f"{env_prefix}:job:{handle.job_id}", "last_run_id").decode()
    pid = wait_for(lambda: r.hget(calls_key("slow") + ":pids", run_id), 60, "the run to start")
    os.kill(int(pid), signal.SIGKILL)

    job = finished(ductape, handle.job_id, JobStatus.COMPLETED, timeout_s=40)  # well under the lease
    [call] = [json.loads(x) for x in r.lrange(calls_key("slow"), 0, -1)]
    assert call["run_id"] == run_id and call["attempt"] == 2
    assert job.attempts == 2 and started(r, "slow", run_id) == 2
    assert worker.poll() is None


def test_a_lost_pool_process_on_the_last_attempt_dead_letters_the_run(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    procs.beat(**EAGER_RESEND)
    procs.worker(concurrency=1, **EAGER_RESEND)
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="slow", retries=0, input={"seconds": 3}
    )
    run_id = r.hget(f"{env_prefix}:job:{handle.job_id}", "last_run_id").decode()
    pid = wait_for(lambda: r.hget(calls_key("slow") + ":pids", run_id), 60, "the run to start")
    os.kill(int(pid), signal.SIGKILL)

    finished(ductape, handle.job_id, JobStatus.FAILED)
    wait_for(lambda: settled(r, env_prefix, run_id), 60, "nothing left that could send the run again")
    run = only_run(ductape, handle.job_id)
    assert run.attempts == 1 and run.error is not None and run.error.startswith("worker lost")
    assert started(r, "slow", run_id) == 1 and r.llen(calls_key("slow")) == 0
    assert [d.run_id for d in ductape.job.failed()] == [run_id]


def test_an_async_handler_is_awaited_with_its_result_typed_input_retries_and_timeout(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    procs.worker(concurrency=2)
    base = {"env": "dev", "product_tag": "tests"}
    echo = ductape.job.schedule(**base, event="async_echo", input={"k": 1})
    typed = ductape.job.schedule(**base, event="async_typed", input={"user_id": "u1", "email": "a@b.c"})
    flaky = ductape.job.schedule(**base, event="async_flaky", retries=2, input={"succeed_on": 2})
    late = ductape.job.schedule(**base, event="async_flaky", retries=0, timeout=1, input={"seconds": 30})

    assert finished(ductape, echo.job_id, JobStatus.COMPLETED).result == {"echo": {"k": 1}, "awaited": True}
    assert finished(ductape, typed.job_id, JobStatus.COMPLETED).result == {"user": "u1"}
    [typed_call] = [json.loads(x) for x in r.lrange(calls_key("async_typed"), 0, -1)]
    assert typed_call["input"] == {"type": "Signup", "user_id": "u1", "email": "a@b.c"}

    job = finished(ductape, flaky.job_id, JobStatus.COMPLETED)
    assert job.result == "ok" and job.attempts == 2
    attempts = [json.loads(x)["attempt"] for x in r.lrange(calls_key("async_flaky"), 0, -1)]
    assert sorted(attempts) == [1, 2]

    job = finished(ductape, late.job_id, JobStatus.FAILED)
    run = only_run(ductape, late.job_id)
    assert run.attempts == 1 and run.error is not None
    assert run.error.startswith("JobTimeoutError: timed out after 1 s")
