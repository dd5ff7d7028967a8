"""A busy worker's main process keeps no timer of a run that has ended (workers/hub_timers.py): a
run's hard time limit, cancelled when it ends in time, leaves the event loop's heap within seconds
instead of staying there until the limit (330 s at the default timeout), one per run. The heap's
size is read as the README shows it: ``celery -A workers inspect stats``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from ductape_jobs import Ductape, JobStatus
from tests.support import ROOT, Processes, wait_for
from workers.hub_timers import EVERY_S

pytestmark = pytest.mark.e2e

RUNS = 300


def test_the_time_limits_of_ended_runs_leave_the_workers_event_loop(
    procs: Processes, ductape: Ductape, prefix: str
):
    procs.worker(concurrency=2)
    hostname = f"w1-{prefix}@{socket.gethostname()}"
    batch = [{"env": "dev", "product_tag": "tests", "event": "work", "input": {"n": n}} for n in range(RUNS)]
    job_ids = [h.job_id for h in ductape.job.schedule_many(batch)]
    done = JobStatus.COMPLETED
    wait_for(lambda: all(ductape.job.get(j).status == done for j in job_ids), 120, "every run to complete")

    def timers() -> int:
        command = [sys.executable, "-m", "celery", "-A", "workers", "inspect", "stats", "-d", hostname]
        command.append("--json")
        out = subprocess.run(command, cwd=ROOT, env=procs.env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(json.loads(out.stdout)[hostname]["hub_timers"])

    # Every run set one (Celery's hard time limit) and cancelled it as it ended. What remains are
    # the loop's own repeating timers.
    wait_for(lambda: timers() < 30, 4 * EVERY_S + 20, f"fewer than 30 of the {RUNS} runs' timers left")
