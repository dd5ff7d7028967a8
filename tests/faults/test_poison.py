"""A poison job: exactly retries+1 attempts, one dead-letter entry, and a redrive that runs it again."""

from __future__ import annotations

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus
from tests.faults.conftest import Report, calls
from tests.support import Processes, wait_for

pytestmark = pytest.mark.faults


def test_poison_job_dead_letters_once_and_redrives(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str, report: Report
):
    procs.worker(concurrency=2)
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="flaky", retries=2, input={})
    job = wait_for(
        lambda: (j := ductape.job.get(handle.job_id)).status == JobStatus.FAILED and j, 30, "the job to fail"
    )
    run_id = job.last_run_id or ""
    first = [c["attempt"] for c in calls(r, "flaky")]
    dead = ductape.job.failed()
    assert first == [1, 2, 3]
    assert [d.run_id for d in dead] == [run_id] and dead[0].status == RunStatus.FAILED
    assert "boom on attempt 3" in (dead[0].error or "") and "RuntimeError" in (dead[0].traceback or "")

    assert ductape.job.redrive(run_id) == run_id
    assert ductape.job.failed() == []  # out of the dead letters while it runs again
    wait_for(
        lambda: len(calls(r, "flaky")) >= 6 and len(ductape.job.failed()) == 1, 30, "the redriven run to fail"
    )
    wait_for(lambda: ductape.job.get(handle.job_id).status == JobStatus.FAILED, 10, "the job to fail again")
    attempts = [c["attempt"] for c in calls(r, "flaky")]
    dead = ductape.job.failed()
    report(
        "7 poison job: retries=2, then redrive",
        len(attempts),
        len(attempts),
        0,
        len(attempts) - 6,
        attempts=attempts,
        dead_letters=len(dead),
    )
    assert attempts == [1, 2, 3, 1, 2, 3]
    assert [d.run_id for d in dead] == [run_id]
    assert {c["run_id"] for c in calls(r, "flaky")} == {run_id}
    assert r.zcard(f"{env_prefix}:dead") == 1
