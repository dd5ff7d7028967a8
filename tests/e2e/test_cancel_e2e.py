"""Cancelling a running run (issue 14 item 4) on real worker, beat and Flower processes: a handler
that checks its context stops cooperatively, one that does not is killed through Celery's revoke,
and a schedule goes on after one of its runs is cancelled."""

from __future__ import annotations

import os

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus
from tests.e2e.test_attempts import EAGER_RESEND, settled, started
from tests.e2e.test_flower import PASSWORD, USER, api_tasks, get
from tests.handlers import calls_key
from tests.support import Processes, free_port, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def run_status(ductape: Ductape, job_id: str, run_id: str) -> RunStatus | None:
    return next((run.status for run in ductape.job.runs(job_id) if run.run_id == run_id), None)


def ended(ductape: Ductape, job_id: str, run_id: str, status: RunStatus = RunStatus.CANCELLED) -> None:
    wait_for(lambda: run_status(ductape, job_id, run_id) == status, 60, f"run {run_id} {status.value}")


def running(r: redis.Redis, name: str, job_id: str) -> str:
    """The run id of the job's run once handler ``name`` started it."""
    return wait_for(
        lambda: next(
            (
                x.decode()
                for x in r.lrange(calls_key(name) + ":started", 0, -1)
                if x.decode().startswith(job_id)
            ),
            None,
        ),
        60,
        f"{name} to start a run of {job_id}",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_running_run_is_cancelled_cooperatively_or_terminated_and_the_worker_carries_on(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    # One pool process, so the run after the terminated one runs on its replacement; beat and
    # kombu would send again anything left in flight (EAGER_RESEND).
    procs.beat(**EAGER_RESEND)
    procs.worker(concurrency=1, DUCTAPE_TASK_EVENTS="true", **EAGER_RESEND)
    port = free_port()
    procs.flower(port, f"{USER}:{PASSWORD}")
    wait_for(lambda: f"w2-{env_prefix}@" in get(port, "/workers?json=1")[1], 60, "Flower to hear the worker")

    # Cooperative: the handler checks ctx.cancelled() between steps.
    patient = ductape.job.schedule(
        env="dev", product_tag="tests", event="patient", retries=3, input={"seconds": 120}
    )
    patient_run = running(r, "patient", patient.job_id)
    assert ductape.job.cancel_run(patient_run).status == RunStatus.RUNNING  # asked; the handler decides
    ended(ductape, patient.job_id, patient_run)
    assert r.lrange(calls_key("patient") + ":cancelled", 0, -1) == [patient_run.encode()]

    # Forced: the handler sleeps without checking; its pool process is killed.
    slow = ductape.job.schedule(
        env="dev", product_tag="tests", event="slow", retries=3, input={"seconds": 300}
    )
    slow_run = running(r, "slow", slow.job_id)
    pid = int(wait_for(lambda: r.hget(calls_key("slow") + ":pids", slow_run), 60, "the slow run's pid"))
    assert ductape.job.cancel_run(slow_run, terminate=True).status == RunStatus.CANCELLED
    wait_for(lambda: not alive(pid), 60, "the pool process running it to be killed")

    after = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"n": 1})
    wait_for(lambda: ductape.job.get(after.job_id).status == JobStatus.COMPLETED, 60, "the next run")

    for job_id, run_id, name in ((patient.job_id, patient_run, "patient"), (slow.job_id, slow_run, "slow")):
        [run] = ductape.job.runs(job_id)
        assert (run.status, run.attempts) == (RunStatus.CANCELLED, 1), run  # never retried
        assert ductape.job.get(job_id).status == JobStatus.CANCELLED  # a one-off's only run
        assert started(r, name, run_id) == 1
        wait_for(lambda rid=run_id: settled(r, env_prefix, rid), 60, "nothing left to send it again")
    assert ductape.job.failed() == []  # a cancelled run is no dead letter
    tasks = wait_for(
        lambda: (
            (t := api_tasks(port))
            and all(t.get(x, {}).get("state") == "REVOKED" for x in (patient_run, slow_run))
            and t
        ),
        60,
        "Flower to show both runs revoked",
    )
    assert tasks[slow_run]["state"] == "REVOKED"


def test_cancelling_one_run_of_a_schedule_lets_the_next_slot_run_and_cancelling_the_job_stops_it(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
):
    procs.beat()
    procs.worker(concurrency=2)
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="patient", input={"seconds": 60}, repeat={"every": 3000}
    )
    first = running(r, "patient", handle.job_id)
    ductape.job.cancel_run(first)
    ended(ductape, handle.job_id, first)
    assert ductape.job.get(handle.job_id).status == JobStatus.SCHEDULED  # the schedule goes on

    second = wait_for(
        lambda: next(
            (x.decode() for x in r.lrange(calls_key("patient") + ":started", 0, -1) if x.decode() != first),
            None,
        ),
        60,
        "the next slot to start",
    )
    job = ductape.job.cancel(handle.job_id)  # the job, and with it its running run
    assert job.status == JobStatus.CANCELLED and job.next_run_at is None
    ended(ductape, handle.job_id, second)
    assert r.lrange(calls_key("patient") + ":cancelled", 0, -1) == [first.encode(), second.encode()]
    wait_for(lambda: settled(r, env_prefix, second), 60, "nothing left to send it again")
