"""Keys and updates end to end: a real ``celery worker`` and ``celery beat``, counting what
handlers actually ran (tests.handlers records each call and counts run ids)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, Settings
from tests.e2e.test_beat import calls, executions, nominal_by_job
from tests.support import ROOT, Processes, wait_for

pytestmark = pytest.mark.e2e

JOB = {"env": "dev", "product_tag": "tests", "event": "echo"}
# Scheduled by a separate process, as a producer service retrying would: prints the handle.
PRODUCER = """
import json, sys
from ductape_jobs import Ductape
with Ductape() as ductape:
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo",
                                  idempotency_key=sys.argv[1], input={"pid": sys.argv[2]})
print(json.dumps({"job_id": handle.job_id, "created": handle.created}))
"""


def test_an_updated_schedule_runs_on_its_new_rule_and_one_idempotency_key_from_two_processes_runs_once(
    procs: Processes, ductape: Ductape, settings: Settings, r: redis.Redis, prefix: str, monkeypatch
):
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    procs.worker()
    procs.beat()
    # overlap 'allow': every slot runs even on a slow machine, so the gaps below are exact
    job = ductape.job.schedule(
        **JOB, key="e2e-report", input={"v": 1}, repeat={"every": 1_000, "overlap": "allow"}
    )
    wait_for(lambda: len(nominal_by_job(r).get(job.job_id, [])) >= 2, 30, "two runs on the first rule")

    again = ductape.job.schedule(
        **JOB, key="e2e-report", input={"v": 2}, repeat={"every": 2_000, "limit": 5, "overlap": "allow"}
    )
    assert (again.job_id, again.created, again.updated) == (job.job_id, False, True)
    wait_for(lambda: ductape.job.get(job.job_id).status == JobStatus.COMPLETED, 30, "the new rule's limit")
    wait_for(lambda: len(nominal_by_job(r)[job.job_id]) == 5, 30, "every released run to execute")

    times = nominal_by_job(r)[job.job_id]
    assert set(executions(r).values()) == {1}  # no slot ran twice
    by_run = {c["run_id"]: c["input"] for c in calls(r)}
    new = [t for t in times if by_run[f"{job.job_id}:{t}"] == {"v": 2}]
    assert len(new) >= 2 and all(b - a == 2_000 for a, b in itertools.pairwise(new))
    assert new[0] > max(t for t in times if t not in new)
    listed = sorted(run.nominal_ms for run in ductape.job.runs(job.job_id, 100))
    assert listed == times  # the runs of the old rule are still the job's history

    env = {**procs.env(), "DUCTAPE_REQUIRE_HANDLER": "false"}
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, "charge-77", str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        for i in range(2)
    ]
    handles = [json.loads(p.communicate(timeout=60)[0]) for p in producers]
    assert handles[0]["job_id"] == handles[1]["job_id"]
    assert sorted(h["created"] for h in handles) == [False, True]
    one_off = handles[0]["job_id"]
    wait_for(lambda: ductape.job.get(one_off).status == JobStatus.COMPLETED, 30, "the one-off to run")
    assert [c["run_id"].split(":")[0] for c in calls(r)].count(one_off) == 1
    assert len(ductape.job.runs(one_off)) == 1
