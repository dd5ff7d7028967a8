"""The spine end to end: schedule() -> Redis -> Celery -> a handler on a real worker."""

from __future__ import annotations

import itertools
import json
import time

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus, Settings, UnknownEventError
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e


def calls(r: redis.Redis, name: str) -> list[dict]:
    """What handler ``name`` recorded, in order."""
    return [json.loads(x) for x in r.lrange(calls_key(name), 0, -1)]


def finished(ductape: Ductape, job_id: str, status: JobStatus, timeout_s: float = 30):
    """Wait until the job reaches ``status``."""
    return wait_for(
        lambda: (job := ductape.job.get(job_id)).status == status and job, timeout_s, f"job {status.value}"
    )


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def test_immediate_job_runs_once_with_its_input_and_context(
    procs: Processes, ductape: Ductape, r, env_prefix
):
    procs.worker()
    handle = ductape.job.schedule(
        env="prd",
        product_tag="tests",
        event="echo",
        start_at=0,
        retries=3,
        input={"userId": "user_123", "email": "john@example.com"},
        app="web",
    )
    assert handle.status == JobStatus.QUEUED and not handle.recurring
    job = finished(ductape, handle.job_id, JobStatus.COMPLETED)
    assert job.result == {"echo": {"userId": "user_123", "email": "john@example.com"}}
    assert job.attempts == 1
    [call] = calls(r, "echo")
    assert call["input"] == {"userId": "user_123", "email": "john@example.com"}
    assert (
        call["job_id"],
        call["env"],
        call["product_tag"],
        call["event"],
        call["app"],
        call["attempt"],
    ) == (handle.job_id, "prd", "tests", "echo", "web", 1)
    assert call["run_id"] == job.last_run_id and call["run_id"].startswith(handle.job_id + ":")
    [run] = ductape.job.runs(handle.job_id)
    assert run.status == RunStatus.COMPLETED and run.started_ms and run.finished_ms


def test_dict_and_model_forms_are_accepted(procs: Processes, ductape: Ductape, env_prefix):
    from ductape_jobs import JobRequest

    procs.worker()
    a = ductape.job.schedule(
        {
            "env": "dev",
            "product_tag": "tests",
            "event": "echo",
            "start_at": 0,
            "retries": 0,
            "input": {"n": 1},
        }
    )
    b = ductape.job.schedule(JobRequest(env="dev", product="tests", event="echo", input={"n": 2}))
    assert finished(ductape, a.job_id, JobStatus.COMPLETED).result == {"echo": {"n": 1}}
    assert finished(ductape, b.job_id, JobStatus.COMPLETED).result == {"echo": {"n": 2}}


def test_start_at_within_horizon_runs_at_that_time(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    at_s = round(time.time() + 2, 3)
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", start_at=at_s, input={})
    assert handle.status == JobStatus.QUEUED
    finished(ductape, handle.job_id, JobStatus.COMPLETED)
    [call] = calls(r, "echo")
    assert call["scheduled_ms"] == round(at_s * 1000)
    assert call["at_ms"] >= round(at_s * 1000)  # not before its time (ETA honoured)


def test_retries_back_off_then_dead_letter(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="flaky", retries=2, input={})
    job = finished(ductape, handle.job_id, JobStatus.FAILED)
    attempts = calls(r, "flaky")
    assert [c["attempt"] for c in attempts] == [1, 2, 3]
    gaps = [b["at_ms"] - a["at_ms"] for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 900 and gaps[1] >= 1900 and gaps[1] > gaps[0]  # 1 s then 2 s
    assert job.attempts == 3 and "boom on attempt 3" in (job.last_error or "")
    [dead] = ductape.job.failed()
    assert dead.run_id == job.last_run_id and dead.status == RunStatus.FAILED
    assert "RuntimeError" in (dead.traceback or "")


def test_retry_that_succeeds_completes(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="flaky", retries=3, input={"succeed_on": 2}
    )
    job = finished(ductape, handle.job_id, JobStatus.COMPLETED)
    assert job.result == "ok" and job.attempts == 2 and ductape.job.failed() == []


def test_cache_hit_skips_the_handler(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    first = ductape.job.schedule(env="dev", product_tag="tests", event="echo", cache="short", input={"q": 1})
    finished(ductape, first.job_id, JobStatus.COMPLETED)
    second = ductape.job.schedule(env="dev", product_tag="tests", event="echo", cache="short", input={"q": 1})
    job = finished(ductape, second.job_id, JobStatus.COMPLETED)
    other = ductape.job.schedule(env="dev", product_tag="tests", event="echo", cache="short", input={"q": 2})
    finished(ductape, other.job_id, JobStatus.COMPLETED)
    assert job.result == {"echo": {"q": 1}}
    assert [c["input"] for c in calls(r, "echo")] == [{"q": 1}, {"q": 2}]
    [run] = ductape.job.runs(second.job_id)
    assert run.cached


def test_env_queues_are_separate(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker(envs="dev")
    prd = ductape.job.schedule(env="prd", product_tag="tests", event="echo", input={"env": "prd"})
    dev = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"env": "dev"})
    finished(ductape, dev.job_id, JobStatus.COMPLETED)
    time.sleep(1.0)  # give a wrongly-routed prd run every chance to be picked up
    assert ductape.job.get(prd.job_id).status == JobStatus.QUEUED
    assert [c["input"] for c in calls(r, "echo")] == [{"env": "dev"}]
    procs.worker(envs="prd")
    finished(ductape, prd.job_id, JobStatus.COMPLETED)


def test_typed_handler_receives_a_validated_model(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    ok = ductape.job.schedule(
        env="dev", product_tag="tests", event="typed", retries=3, input={"user_id": "u1", "email": "a@b.c"}
    )
    assert finished(ductape, ok.job_id, JobStatus.COMPLETED).result == {"user": "u1"}
    assert calls(r, "typed")[0]["input"] == {"type": "Signup", "user_id": "u1", "email": "a@b.c"}
    bad = ductape.job.schedule(env="dev", product_tag="tests", event="typed", retries=3, input={"user_id": 1})
    job = finished(ductape, bad.job_id, JobStatus.FAILED)
    assert job.attempts == 1  # a bad input is not retried
    assert "ValidationError" in (job.last_error or "")


def test_unknown_event_is_refused_once_workers_registered(
    procs: Processes, settings: Settings, r, env_prefix
):
    procs.worker()
    strict = Ductape(settings=settings.replace(**{"require_handler": True}))
    before = set(r.keys(f"{settings.key_prefix}:*"))
    with pytest.raises(UnknownEventError) as err:
        strict.job.schedule(env="dev", product_tag="tests", event="no_such_event", input={})
    assert "echo" in str(err.value) and "no_such_event" in str(err.value)
    assert set(r.keys(f"{settings.key_prefix}:*")) == before
    handle = strict.job.schedule(env="dev", product_tag="tests", event="echo", input={})
    finished(strict, handle.job_id, JobStatus.COMPLETED)
    strict.close()
