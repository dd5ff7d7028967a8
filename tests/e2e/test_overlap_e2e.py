"""repeat.overlap and backfill end to end: one real worker and one real beat, a slow handler on a
fast schedule under each policy (what ran, and when, is read from the run records the worker
wrote), and a backfill run twice whose slots each execute once on the worker."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus
from ductape_jobs.models import RunRecord
from ductape_jobs.terms import run_id_for
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

EVERY_MS = 1_000
HANDLER_S = 2.5  # each run outlasts two slots


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def overlaps(runs: list[RunRecord]) -> int:
    """How many pairs of executed runs ran at the same time (from their recorded start and end)."""
    ran = sorted((r.started_ms or 0, r.finished_ms or 0) for r in runs if r.status == RunStatus.COMPLETED)
    return sum(1 for i, (_, end) in enumerate(ran) for start, _ in ran[i + 1 :] if start < end)


def test_a_slow_handler_on_a_fast_schedule_under_each_policy_and_a_backfill_run_twice(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
) -> None:
    procs.worker(concurrency=6)  # room for every overlapping run: any overlap not seen is prevented
    procs.beat()
    now = time.time_ns() // 1_000_000
    jobs = {
        policy: ductape.job.schedule(
            env="dev",
            product_tag="tests",
            event="slow",
            start_at=now + 1_500,  # released by beat, every slot
            input={"seconds": HANDLER_S, "policy": policy},
            repeat={"every": EVERY_MS, "limit": 3, "overlap": policy},
        ).job_id
        for policy in ("allow", "skip", "buffer_one")
    }
    # The backfill's schedule: begun 5 s ago (start_at), so 5 past slots lie before its first run.
    echo = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        start_at=now - 5 * EVERY_MS,
        repeat={"every": EVERY_MS, "limit": 1},
    )
    anchor = round(echo.scheduled_at.timestamp() * 1000)
    first = ductape.job.backfill(echo.job_id, now - 5 * EVERY_MS, anchor - 1)
    assert first == [run_id_for(echo.job_id, anchor - k * EVERY_MS) for k in range(5, 0, -1)]
    assert ductape.job.backfill(echo.job_id, now - 5 * EVERY_MS, anchor - 1) == []  # at once: nothing

    waiting = Counter[int]()  # how many runs of the buffer_one schedule were seen buffered at once

    def finished() -> bool:
        runs = ductape.job.runs(jobs["buffer_one"], 100)
        waiting[sum(run.status == RunStatus.BUFFERED for run in runs)] += 1
        return all(
            ductape.job.get(j).status == JobStatus.COMPLETED
            and sum(run.status == RunStatus.COMPLETED for run in ductape.job.runs(j, 100)) == 3
            for j in jobs.values()
        )

    wait_for(finished, 60, "each policy's 3 runs to execute")
    runs = {policy: ductape.job.runs(job_id, 100) for policy, job_id in jobs.items()}
    skipped = {policy: ductape.job.get(job_id).skipped_slots for policy, job_id in jobs.items()}

    assert overlaps(runs["allow"]) >= 2 and skipped["allow"] == 0  # 3 runs 1 s apart, 2.5 s each
    assert overlaps(runs["skip"]) == 0 and skipped["skip"] >= 2
    assert skipped["skip"] == sum(run.status == RunStatus.SKIPPED for run in runs["skip"])
    assert overlaps(runs["buffer_one"]) == 0 and skipped["buffer_one"] >= 1
    assert max(waiting) == 1  # one run waited behind the running one, never two
    # Every executed slot ran once, on phase.
    ran = Counter(k.decode() for k in r.hkeys(calls_key("slow") + ":runs"))
    assert set(ran.values()) == {1}
    for job_id in jobs.values():
        nominal = sorted(int(run_id.rsplit(":", 1)[1]) for run_id in ran if run_id.startswith(job_id))
        assert len(nominal) == 3 and all((t - nominal[0]) % EVERY_MS == 0 for t in nominal)

    # The backfill: each slot executed once on the worker; asking again (now all ran) adds nothing.
    def echo_runs() -> Counter[str]:
        return Counter({k.decode(): int(v) for k, v in r.hgetall(calls_key("echo") + ":runs").items()})

    wait_for(lambda: set(first) <= set(echo_runs()), 30, "the backfilled slots to execute")
    assert ductape.job.backfill(echo.job_id, now - 5 * EVERY_MS, anchor - 1) == []
    assert {run_id: echo_runs()[run_id] for run_id in first} == dict.fromkeys(first, 1)
    assert ductape.job.get(echo.job_id).runs_done == 1  # backfilled runs do not count toward limit
