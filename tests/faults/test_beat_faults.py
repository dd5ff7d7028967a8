"""Beat leaders killed, racing and stalled: no occurrence doubled, none missing beyond the misfire policy.

Each scenario runs with one shard (one leader, the other beat standing by) and with four (both
beats lead two shards each; the survivor takes the others' over), docs/design.md section 11."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from ductape_jobs import Ductape
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.terms import job_id_of
from tests.faults.conftest import Report, executions, lock_holders, nominal, now_ms
from tests.support import Processes, wait_for

pytestmark = pytest.mark.faults

SHORT_LOCK = {"DUCTAPE_BEAT_LOCK_TTL_MS": "1500"}
EVERY_MS = 1_000


@dataclass
class Tally:
    """What the schedules' executions add up to against the misfire policy."""

    runs: int  # executions recorded by the handler
    lost: int  # slots that never ran (misfire 'run_all' runs every slot, the outage's too)
    duplicated: int  # a run id executed twice, or two executions of one slot


def schedule_every(ductape: Ductape, count: int, limit: int) -> dict[str, int]:
    """``count`` schedules every second with ``limit`` runs; job id -> its phase anchor (ms)."""
    start = now_ms() + 1_500
    handles = ductape.job.schedule_many(
        [
            {
                "env": "dev",
                "product_tag": "tests",
                "event": "echo",
                "start_at": start + (i % 10) * 97,
                "input": {"i": i},
                # every slot must run, so any slot missing is lost: overlap 'allow' (not the
                # default 'skip', which skips a slot whose run is still queued on a loaded
                # machine) and misfire 'run_all' within a minute (not 'skip', which skips slots a
                # beat late by more than a second passed: a loaded machine did, outside the outage)
                "repeat": {
                    "every": EVERY_MS,
                    "limit": limit,
                    "overlap": "allow",
                    "misfire": "run_all",
                    "catchup_ms": 60_000,
                },
            }
            for i in range(count)
        ]
    )
    return {h.job_id: round(h.scheduled_at.timestamp() * 1000) for h in handles}


@pytest.fixture(params=[1, 4], ids=["1-shard", "4-shards"])
def shards(request: pytest.FixtureRequest, procs: Processes) -> int:
    """The deployment's shard count, for the beats and workers started by ``procs``."""
    procs.overrides["DUCTAPE_SHARDS"] = str(request.param)
    return int(request.param)


@pytest.fixture
def client(settings: Settings, shards: int) -> Iterator[Ductape]:
    """A client of the deployment, with its shard count."""
    ductape = Ductape(settings=settings.replace(**{"shards": shards}))
    yield ductape
    ductape.close()


def finished(r: redis.Redis, keys: Keys, job_ids: list[str], limit: int) -> bool:
    """Every schedule completed with ``limit`` runs, and every run executed."""
    with r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), "status", "runs_done")
        rows = pipe.execute()
    done = all(s == b"completed" and int(n) == limit for s, n in rows)
    return done and sum(executions(r, "echo").values()) >= len(job_ids) * limit


def tally(r: redis.Redis, anchors: dict[str, int], limit: int) -> Tally:
    """Count executions per schedule: every slot up to ``limit`` must have run exactly once."""
    ran = executions(r, "echo")
    slots: dict[str, list[int]] = defaultdict(list)
    for run_id in ran:
        slots[job_id_of(run_id)].append(nominal(run_id))
    lost = duplicated = 0
    for job_id, anchor in anchors.items():
        times = sorted(slots.get(job_id, []))
        duplicated += len(times) - len(set(times))
        assert all((t - anchor) % EVERY_MS == 0 for t in times), (job_id, times)  # on phase
        missing = sorted(set(range(times[0], times[-1] + 1, EVERY_MS)) - set(times)) if times else []
        lost += len(missing)
        lost += max(limit - len(set(times)), 0)
    duplicated += sum(n - 1 for n in ran.values())
    return Tally(sum(ran.values()), lost, duplicated)


def held_by(r: redis.Redis, prefix: str, shards: int, *pids: int) -> bool:
    """Every shard led, by these beats only, and by each of them its share."""
    holders = lock_holders(r, prefix, shards)
    share = -(-shards // len(pids))
    return set(holders) <= set(pids) and all(0 < holders.count(pid) <= share for pid in pids)


def test_killed_leader_standby_takes_over(
    procs: Processes, client: Ductape, r: redis.Redis, env_prefix: str, report: Report, shards: int
):
    count, limit = 200, 8
    keys = Keys(env_prefix, shards)
    procs.worker(concurrency=3)
    leader = procs.beat(**SHORT_LOCK)
    wait_for(lambda: held_by(r, env_prefix, shards, leader.pid), 30, "the first beat to lead")
    standby = procs.beat(**SHORT_LOCK)
    if shards > 1:  # the second beat leads its share: the first gives it up
        wait_for(lambda: held_by(r, env_prefix, shards, leader.pid, standby.pid), 30, "the beats to balance")
    anchors = schedule_every(client, count, limit)
    wait_for(lambda: sum(executions(r, "echo").values()) >= 3 * count, 60, "three rounds under the leader")

    killed_ms = now_ms()
    procs.kill(leader)
    wait_for(lambda: held_by(r, env_prefix, shards, standby.pid), 20, "the standby to take over")
    took_over_ms = now_ms()
    wait_for(lambda: finished(r, keys, list(anchors), limit), 90, "every schedule to reach its limit")

    t = tally(r, anchors, limit)
    report(
        f"3 beat leader SIGKILLed, standby takes over ({shards} shard(s))",
        t.runs,
        1,
        t.lost,
        t.duplicated,
        schedules=count,
        shards=shards,
        outage_ms=took_over_ms - killed_ms,
    )
    assert t.lost == 0 and t.duplicated == 0
    assert t.runs == count * limit
    assert standby.poll() is None


def test_two_beats_together_and_a_stalled_leader(
    procs: Processes, client: Ductape, r: redis.Redis, env_prefix: str, report: Report, shards: int
):
    count, limit = 100, 10
    keys = Keys(env_prefix, shards)
    procs.worker(concurrency=3)
    beats = [procs.beat(**SHORT_LOCK), procs.beat(**SHORT_LOCK)]  # racing for the locks from the start
    anchors = schedule_every(client, count, limit)
    if shards > 1:  # both lead: two shards each
        wait_for(lambda: held_by(r, env_prefix, shards, *(b.pid for b in beats)), 30, "the beats to balance")
    wait_for(lambda: sum(executions(r, "echo").values()) >= 3 * count, 60, "three rounds")

    holder = lock_holders(r, env_prefix, shards)[0]
    leader = next(b for b in beats if b.pid == holder)
    other = next(b for b in beats if b.pid != holder)
    stopped_ms = now_ms()
    procs.signal(leader, signal.SIGSTOP)  # frozen holding its locks and fencing tokens
    wait_for(lambda: held_by(r, env_prefix, shards, other.pid), 20, "the other beat to take over")
    took_over_ms = now_ms()
    before = sum(executions(r, "echo").values())
    wait_for(
        lambda: sum(executions(r, "echo").values()) >= before + count, 30, "a round under the new leader"
    )
    procs.signal(leader, signal.SIGCONT)  # wakes mid-tick, believing it leads
    wait_for(lambda: finished(r, keys, list(anchors), limit), 90, "every schedule to reach its limit")
    time.sleep(1.0)  # give the resumed beat every chance to release something twice
    wait_for(
        lambda: "lost the leader lock" in procs.log(leader) or "fenced out" in procs.log(leader),
        15,
        "the resumed beat to notice it lost the lock",
    )
    if shards > 1:  # back in the registry, it gets its share again
        wait_for(
            lambda: held_by(r, env_prefix, shards, leader.pid, other.pid), 30, "the beats to balance again"
        )

    t = tally(r, anchors, limit)
    report(
        f"4 two beats at once + leader SIGSTOPped past its TTL ({shards} shard(s))",
        t.runs,
        2,
        t.lost,
        t.duplicated,
        schedules=count,
        shards=shards,
        stall_ms=took_over_ms - stopped_ms,
    )
    assert t.duplicated == 0 and t.lost == 0
    assert t.runs == count * limit
    assert all(b.poll() is None for b in beats)
