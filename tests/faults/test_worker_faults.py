"""Workers SIGKILLed mid-run and while a backlog drains: every run completes, none completes twice."""

from __future__ import annotations

import re
import time
from collections import defaultdict

import pytest
import redis

from ductape_jobs import Ductape
from tests.faults.conftest import Report, calls, executions
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.faults

# Redelivery of a dead worker's runs waits out the visibility timeout; the run lease (how long a
# started run is held against other deliveries) is below it, so the redelivered copy may run.
FAST_REDELIVERY = {"DUCTAPE_VISIBILITY_TIMEOUT_S": "3", "DUCTAPE_RUN_LEASE_S": "2"}


def statuses(r: redis.Redis, prefix: str, job_ids: list[str]) -> list[str]:
    """The stored status of each job, in one round trip."""
    with r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(f"{prefix}:job:{job_id}", "status")
        return [(s or b"missing").decode() for s in pipe.execute()]


def final_attempts(r: redis.Redis, prefix: str, run_ids: list[str]) -> dict[str, int]:
    """The attempt each run finished on (the only one whose outcome could be recorded)."""
    with r.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(f"{prefix}:run:{run_id}", "attempts")
        return {run: int(a or 0) for run, a in zip(run_ids, pipe.execute(), strict=True)}


def completed_twice(r: redis.Redis, prefix: str, name: str) -> tuple[int, int]:
    """(duplicates, re-executions after a kill) from the handler's records.

    A record is left only after the handler's work. A run's outcome is recorded only by the
    attempt it finished on (FINISH_RUN is fenced by the attempt number), so a record from an
    earlier attempt is a handler that finished its work but was killed before its completion
    was recorded: run again, never completed twice. Two records of one attempt would be a
    duplicate (BEGIN_RUN hands each attempt number out once).
    """
    attempts: dict[str, list[int]] = defaultdict(list)
    for call in calls(r, name):
        attempts[call["run_id"]].append(call["attempt"])
    final = final_attempts(r, prefix, list(attempts))
    duplicated = sum(len(seen) - len(set(seen)) for seen in attempts.values())
    rerun = sum(sum(1 for a in set(seen) if a != final[run]) for run, seen in attempts.items())
    return duplicated, rerun


def resent(beat_log: str) -> int:
    """How many runs beat sent again because their message was lost."""
    return sum(int(m) for m in re.findall(r"sent (\d+) run\(s\) again", beat_log))


def in_broker(r: redis.Redis, prefix: str, needle: str) -> list[str]:
    """The broker keys (queues, unacked) holding a message that mentions ``needle``."""
    found = []
    for key in r.scan_iter(match=f"{prefix}:broker:*"):
        kind = r.type(key)
        values = r.lrange(key, 0, -1) if kind == b"list" else r.hvals(key) if kind == b"hash" else []
        if any(needle.encode() in v for v in values):
            found.append(key.decode())
    return found


def test_worker_killed_mid_run_redelivers_and_completes(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str, report: Report
):
    worker = procs.worker(concurrency=1, **FAST_REDELIVERY)
    handles = ductape.job.schedule_many(
        [
            # an attempt a kill interrupts counts (attempts are a hard cap): room for both kills
            {
                "env": "dev",
                "product_tag": "tests",
                "event": "slow",
                "retries": 2,
                "input": {"seconds": 1, "i": i},
            }
            for i in range(3)
        ]
    )
    job_ids = [h.job_id for h in handles]
    started_key = calls_key("slow") + ":started"
    kills, killed_runs = 0, []
    for _ in range(2):
        seen = r.llen(started_key)
        wait_for(lambda seen=seen: r.llen(started_key) > seen, 60, "a slow run to start")
        run_id = r.lindex(started_key, -1).decode()
        if run_id in executions(r, "slow"):
            continue  # it finished already: not mid-run
        procs.kill(worker)  # the worker and its pool child, mid-sleep
        kills += 1
        killed_runs.append(run_id)
        worker = procs.worker(concurrency=1, **FAST_REDELIVERY)

    wait_for(lambda: statuses(r, env_prefix, job_ids) == ["completed"] * 3, 90, "every slow job to complete")
    ran = executions(r, "slow")
    started = [x.decode() for x in r.lrange(started_key, 0, -1)]
    duplicated = sum(n - 1 for n in ran.values())
    lost = len(job_ids) - len(ran)
    report("1 worker SIGKILLed mid-run", len(job_ids), kills, lost, duplicated, killed_runs=len(killed_runs))
    assert kills >= 1
    assert lost == 0 and duplicated == 0, ran
    for run_id in killed_runs:  # each killed run was started again and finished on a later attempt
        assert started.count(run_id) >= 2
        assert final_attempts(r, env_prefix, [run_id])[run_id] >= 2
    assert len(ran) == len(job_ids) == sum(1 for s in statuses(r, env_prefix, job_ids) if s == "completed")


def test_worker_killed_repeatedly_while_a_backlog_drains(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str, report: Report
):
    total = 2_000
    handles = ductape.job.schedule_many(
        [
            # an attempt a kill interrupts counts (attempts are a hard cap): room for every kill
            {"env": "dev", "product_tag": "tests", "event": "work", "retries": 5, "input": {"ms": 4, "i": i}}
            for i in range(total)
        ]
    )
    job_ids = [h.job_id for h in handles]
    assert len(set(job_ids)) == total
    runs_key = calls_key("work") + ":runs"

    # beat is part of the deployment: it sends again a run whose message a kill lost (beat.lost)
    beat = procs.beat(**FAST_REDELIVERY)
    worker = procs.worker(concurrency=2, **FAST_REDELIVERY)
    kills = 0
    for _ in range(5):
        time.sleep(1.0)  # let it work for a moment (fault timing, not an assertion)
        if r.hlen(runs_key) >= total:
            break
        procs.kill(worker)
        kills += 1
        worker = procs.worker(concurrency=2, **FAST_REDELIVERY)

    deadline = time.monotonic() + 90  # a deadline for a loaded machine; it ends once all completed
    while time.monotonic() < deadline and statuses(r, env_prefix, job_ids).count("completed") < total:
        time.sleep(0.2)
    done = statuses(r, env_prefix, job_ids)
    ran = executions(r, "work")
    lost = total - done.count("completed")
    duplicated, rerun = completed_twice(r, env_prefix, "work")
    report(
        "2 worker killed+restarted while 2,000 drain",
        total,
        kills,
        lost,
        duplicated,
        reexecuted_after_kill=rerun,
        never_ran=total - len(ran),
        resent_by_beat=resent(procs.log(beat)),
    )
    assert kills >= 4
    stuck = [j for j, s in zip(job_ids, done, strict=True) if s != "completed"]
    assert lost == 0, (
        {s: done.count(s) for s in set(done)},
        {
            j: (r.hgetall(f"{env_prefix}:job:{j}").get(b"status"), in_broker(r, env_prefix, j))
            for j in stuck[:5]
        },
    )
    assert len(ran) == total
    assert duplicated == 0
    # Re-executions happen only to runs a kill caught between the handler's work and the record
    # of its completion: at most one per pool process per kill.
    assert rerun <= 2 * kills


def test_messages_lost_between_pop_and_unacked_are_sent_again(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str, report: Report
):
    # What a worker killed between kombu's BRPOP and its unacked record leaves behind, made
    # deterministic: queued runs whose messages are gone from the broker.
    handles = ductape.job.schedule_many(
        [{"env": "dev", "product_tag": "tests", "event": "echo", "input": {"i": i}} for i in range(20)]
    )
    parked = ductape.job.schedule(env="prd", product_tag="tests", event="echo", input={"parked": True})
    queue = f"{env_prefix}:broker:{env_prefix}.dev"
    popped = [r.rpop(queue) for _ in range(5)]
    assert all(popped) and r.llen(queue) == 15

    beat = procs.beat(**FAST_REDELIVERY)
    procs.worker(envs="dev", **FAST_REDELIVERY)  # nobody serves prd: its message just waits
    job_ids = [h.job_id for h in handles]
    wait_for(lambda: statuses(r, env_prefix, job_ids) == ["completed"] * 20, 60, "every dev job to complete")
    ran = executions(r, "echo")
    wait_for(lambda: resent(procs.log(beat)) >= 5, 10, "beat to log what it sent again")
    again = resent(procs.log(beat))
    report(
        "2b messages lost between BRPOP and unacked",
        21,
        len(popped),
        20 - len(ran),
        sum(n - 1 for n in ran.values()),
        resent_by_beat=again,
    )
    assert len(ran) == 20 and set(ran.values()) == {1}
    assert again >= 5  # the five lost (a spare copy is possible, and harmless: BEGIN_RUN skips it)
    # A message that is only waiting (its queue has no consumer) is never sent twice.
    assert ductape.job.get(parked.job_id).status.value == "queued"
    assert r.llen(f"{env_prefix}:broker:{env_prefix}.prd") == 1
