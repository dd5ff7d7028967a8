"""Rotating a session type's secret on real worker and beat processes, without downtime.

A recurring job sealed under the old key keeps running once the ring is [new, old]; the same
schedule asked for again after the rotation is still found (its digest under the old key); once
the old key leaves the ring, the old job fails once, with the reason, and is set aside, while a
job sealed under the new key runs on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from typing import Any

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, Settings
from ductape_jobs.keyring import key_id
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

OLD = "test-secret-not-for-prod-0123456789abcdef"  # the conftest secret
NEW = "rotated-secret-not-for-prod-0123456789abcd"


def ring(*secrets: str) -> dict[str, Any]:
    """The sessions setting with a key ring for "user-session"."""
    return {"user-session": {"secrets": list(secrets), "expiry_s": 3600}}


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def echo_calls(r: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The echo handler's calls for one job, in order."""
    return [c for c in (json.loads(x) for x in r.lrange(calls_key("echo"), 0, -1)) if c["job_id"] == job_id]


def restart(procs: Processes, worker: subprocess.Popen[bytes], *secrets: str) -> subprocess.Popen[bytes]:
    """Stop the worker politely, start one whose ring is ``secrets``."""
    # Celery's warm shutdown: SIGTERM to the main process only, which lets the pool finish the run
    # in hand (the process group's SIGTERM also ended a pool process mid-run: a lost attempt, so a
    # run once reached the removed key at its second attempt).
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    return procs.worker(concurrency=1, DUCTAPE_SESSIONS=json.dumps(ring(*secrets)))


def test_a_rotation_keeps_sealed_jobs_running_and_a_removed_key_sets_them_aside_once(
    procs: Processes, ductape: Ductape, settings: Settings, r: redis.Redis, env_prefix: str
) -> None:
    worker = procs.worker(concurrency=1)  # the conftest ring: the one old secret
    procs.beat()
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    request = {
        "env": "dev", "product_tag": "tests", "event": "echo", "retries": 3,
        "input": {"to": "$Session{user}{email}"}, "repeat": {"every": 1000},
    }  # fmt: skip
    token = ductape.sessions.start("user-session", {"user": {"email": email}})
    old_job = ductape.job.schedule({**request, "session": {"tag": "user-session", "token": token}}).job_id
    assert ductape.job.get(old_job).spec.sealed.startswith(key_id(OLD) + ":")  # type: ignore[union-attr]
    wait_for(lambda: len(echo_calls(r, old_job)) >= 2, 60, "two runs under the old key")

    # Rotate: the new key first, the old one still accepted.
    worker = restart(procs, worker, NEW, OLD)
    with Ductape(settings=settings.replace(**{"sessions": ring(NEW, OLD)})) as rotated:
        # The old token still verifies; the same schedule is found, not made twice.
        again = rotated.job.schedule({**request, "session": {"tag": "user-session", "token": token}})
        assert again.job_id == old_job
        fresh = rotated.sessions.start("user-session", {"user": {"email": "n" + email}})
        new_job = rotated.job.schedule(
            {
                **request,
                "session": {"tag": "user-session", "token": fresh},
                "input": {"to": "$Session{user}{email}", "n": 1},
            }
        ).job_id
        assert rotated.job.get(new_job).spec.sealed.startswith(key_id(NEW) + ":")  # type: ignore[union-attr]
    before = len(echo_calls(r, old_job))
    wait_for(
        lambda: len(echo_calls(r, old_job)) >= before + 2, 60, "two runs of the old job after the rotation"
    )
    wait_for(lambda: len(echo_calls(r, new_job)) >= 2, 60, "two runs of the new job")
    assert {c["input"]["to"] for c in echo_calls(r, old_job)} == {email}

    # Remove the old key: its job fails once, with the reason, and is set aside.
    worker = restart(procs, worker, NEW)
    stopped = wait_for(
        lambda: (job := ductape.job.get(old_job)).status == JobStatus.FAILED and job,
        60,
        "the old job set aside",
    )
    reason = stopped.last_error or ""
    assert reason.startswith("RetiredKeyError: sealed: sealed under key") and key_id(OLD) in reason, reason
    assert "not in this key ring of session type 'user-session'" in reason
    assert stopped.next_run_ms is None
    assert [(a.job_id, a.reason) for a in ductape.job.set_aside()] == [(old_job, reason)]  # listed
    # The new job runs on; meanwhile the old one is neither retried nor run again.
    settled = len(echo_calls(r, new_job))
    wait_for(lambda: len(echo_calls(r, new_job)) >= settled + 3, 60, "three more runs of the new job")
    [dead] = [d for d in ductape.job.failed(limit=1000) if d.job_id == old_job]
    assert dead.attempts == 1 and dead.error == reason  # retries=3, yet not retried
    assert ductape.job.get(old_job).status == JobStatus.FAILED
    assert not r.zscore(f"{env_prefix}:due", f"j:{old_job}")
    calls_after = [c for c in echo_calls(r, old_job) if c["run_id"] == dead.run_id]
    assert calls_after == []  # the handler never saw the run it could not open
    assert OLD not in procs.log(worker) and NEW not in procs.log(worker)
