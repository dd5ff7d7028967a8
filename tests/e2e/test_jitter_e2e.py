"""Jitter end to end: a real worker and two real beats (the leader killed mid-way) run every
jittered run once, at or after the time upcoming() showed; the CLI's --jitter-ms flag."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, Settings
from ductape_jobs.jitter import offset_ms
from ductape_jobs.keys import Keys
from tests.e2e.test_beat import SHORT_LOCK, all_done, client, env_prefix, executions, lock_holder
from tests.e2e.test_cli import cli, failed_with, keys_of, out, side_by_side
from tests.support import Processes, wait_for

__all__ = ["cli", "env_prefix"]  # fixtures, imported for pytest

pytestmark = pytest.mark.e2e


def test_jittered_runs_start_at_their_shown_times_once_each_across_a_beat_takeover(
    procs: Processes, settings: Settings, r: redis.Redis, env_prefix: str
):
    procs.worker(concurrency=2)
    leader = procs.beat(**SHORT_LOCK)
    wait_for(lambda: lock_holder(r, env_prefix) == leader.pid, 30, "the first beat to lead")
    standby = procs.beat(**SHORT_LOCK)
    ductape = client(settings)
    start = time.time_ns() // 1_000_000 + 1_500
    # run_all with a window: the runs due while nobody leads go late, none is skipped, so what
    # ran can be set beside what upcoming() showed, run for run.
    # 'allow': with 800 ms of jitter on a 1 s period two runs can fall 200 ms apart, and the default
    # overlap 'skip' would skip a slot whose previous run is still queued (tested on its own)
    repeat = {
        "every": 1_000,
        "jitter_ms": 800,
        "limit": 8,
        "misfire": "run_all",
        "catchup_ms": 10_000,
        "overlap": "allow",
    }
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", start_at=start, repeat=repeat)
    shown = [round(t.timestamp() * 1000) for t in ductape.job.upcoming(handle.job_id, 20)]
    slots = [start + k * 1_000 for k in range(8)]
    assert shown == [s + offset_ms(f"{handle.job_id}:{s}", 800) for s in slots]

    wait_for(lambda: ductape.job.get(handle.job_id).runs_done >= 3, 30, "three runs under the first leader")
    procs.kill(leader)
    wait_for(lambda: lock_holder(r, env_prefix) == standby.pid, 15, "the standby to take over")
    wait_for(all_done(ductape, [handle.job_id], 8), 30, "the job to reach its limit")

    assert executions(r) == {f"{handle.job_id}:{s}": 1 for s in slots}  # slot ids, each run once
    runs = sorted(ductape.job.runs(handle.job_id, 20), key=lambda run: run.nominal_ms)
    assert [run.nominal_ms for run in runs] == slots
    for run, due in zip(runs, shown, strict=True):
        assert run.queued_ms is not None and run.started_ms is not None
        assert due <= run.queued_ms <= run.started_ms, (run.run_id, due, run.queued_ms, run.started_ms)
    assert ductape.job.get(handle.job_id).status == JobStatus.COMPLETED
    ductape.close()


def test_cli_jitter_flag(cli, ductape: Ductape, r: redis.Redis, prefix: str):
    # The README's line, as shown there.
    handle = out(
        cli("""schedule --env prd --product-tag inventory --event sync \
                 --repeat '{"every": 3600000}' --jitter-ms 600000 --json""")
    )  # fmt: skip
    job_id = handle["job_id"]
    before = keys_of(r, prefix)
    flags = "schedule --env dev --product-tag p --event e"
    minute = f"""{flags} --repeat '{{"every": 60000}}'"""
    refused = {
        f"{minute} --jitter-ms 60000": "repeat.jitter_ms: 60000 ms is not below",
        f"{flags} --jitter-ms 500": "give --repeat as well",
        f"""{flags} --repeat '{{"every": 60000, "jitter_ms": 5}}' --jitter-ms 5""": "given twice",
    }
    show, times, *done = side_by_side(cli, f"show {job_id}", f"upcoming {job_id} -n 3 --json", *refused)
    for words, one in zip(refused.values(), done, strict=True):
        failed_with(one, 2, words)
    assert keys_of(r, prefix) == before  # the refusals wrote nothing

    assert "every 1 h, jitter 10 min" in show.stdout
    anchor = int(r.hget(Keys(prefix).job(job_id), "anchor_ms") or 0)
    slots = [anchor + k * 3_600_000 for k in range(3)]
    expected = [s + offset_ms(f"{job_id}:{s}", 600_000) for s in slots]
    assert [round(datetime.fromisoformat(t).timestamp() * 1000) for t in out(times)] == expected
    assert out(times) == [t.isoformat() for t in ductape.job.upcoming(job_id, 3)]
