"""The beat end to end: real ``celery beat`` and ``celery worker`` processes over real Redis.

Every assertion counts what handlers actually ran (tests.handlers records each call and counts
run ids in Redis), so "exactly once" means once on a worker, not once in our bookkeeping.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.figures.memory import descendants
from ductape_jobs import Ductape, JobStatus, RunStatus, Settings, ops
from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.records import Dispatch
from ductape_jobs.terms import job_id_of
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

SHORT_LOCK = {"DUCTAPE_BEAT_LOCK_TTL_MS": "1500"}


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def client(settings: Settings, **overrides: object) -> Ductape:
    return Ductape(settings=settings.replace(**overrides))


def executions(r: redis.Redis, name: str = "echo") -> Counter[str]:
    """How many times handler ``name`` ran each run id."""
    return Counter({k.decode(): int(v) for k, v in r.hgetall(calls_key(name) + ":runs").items()})


def calls(r: redis.Redis, name: str = "echo") -> list[dict]:
    return [json.loads(x) for x in r.lrange(calls_key(name), 0, -1)]


def nominal_by_job(r: redis.Redis, name: str = "echo") -> dict[str, list[int]]:
    """Each job's executed nominal run times, in order."""
    out: dict[str, list[int]] = {}
    for run_id in executions(r, name):
        out.setdefault(job_id_of(run_id), []).append(int(run_id.rsplit(":", 1)[1].rstrip("m")))
    return {job: sorted(times) for job, times in out.items()}


def lock_holder(r: redis.Redis, prefix: str) -> int | None:
    """The pid of the beat holding the leader lock (instance names end in the pid)."""
    token = r.get(f"{prefix}:beat:lock")
    return int(token.decode().rsplit(":", 1)[1]) if token else None


def settled(ductape: Ductape, job_id: str) -> bool:
    """Every run released for the job has finished (executed, or skipped after a cancel)."""
    return all(
        run.status in (RunStatus.COMPLETED, RunStatus.SKIPPED) for run in ductape.job.runs(job_id, 1_000)
    )


def all_done(ductape: Ductape, job_ids: list[str], runs: int):
    """Wait-for check: every job completed with ``runs`` runs, each of them executed."""

    def check() -> bool:
        jobs = [ductape.job.get(j) for j in job_ids]
        finished = all(j.status == JobStatus.COMPLETED and j.runs_done == runs for j in jobs)
        return finished and all(settled(ductape, j) for j in job_ids)

    return check


def on_phase(times: list[int], anchor: int, every_ms: int) -> bool:
    return all((t - anchor) % every_ms == 0 for t in times) and times == sorted(set(times))


# -- the seed's shapes ---------------------------------------------------------------------------


def test_interval_cron_and_later_one_off_fire_once_each_on_time(
    procs: Processes, settings: Settings, r, env_prefix
):
    # Its handlers import no pydantic (tests.handlers' input models would): what loads it is ours.
    worker = procs.worker(DUCTAPE_HORIZON_MS="1000", DUCTAPE_HANDLERS="tests.plain_handlers")
    beat = procs.beat(DUCTAPE_HORIZON_MS="1000")
    ductape = client(settings, horizon_ms=1000)
    every = ductape.job.schedule(
        env="prd",
        product_tag="tests",
        event="echo",
        start_at=0,
        input={"kind": "every"},
        repeat={"every": 1000, "limit": 3},
    )
    cron = ductape.job.schedule(
        env="prd",
        product_tag="tests",
        event="echo",
        input={"kind": "cron"},
        repeat={"cron": "*/2 * * * * *", "limit": 2},
    )
    at_ms = (time.time_ns() // 1_000_000) + 3_000
    later = ductape.job.schedule(
        env="prd", product_tag="tests", event="echo", start_at=at_ms, input={"kind": "later"}
    )
    # Beyond the horizon: held in the due index for beat, not handed to Celery by the producer.
    assert later.status == JobStatus.SCHEDULED and cron.status == JobStatus.SCHEDULED
    assert r.zscore(f"{env_prefix}:due", f"j:{later.job_id}") == at_ms

    wait_for(all_done(ductape, [every.job_id], 3), 30, "the interval job to reach its limit")
    wait_for(all_done(ductape, [cron.job_id], 2), 30, "the cron job to reach its limit")
    wait_for(lambda: ductape.job.get(later.job_id).status == JobStatus.COMPLETED, 30, "the later one-off")

    assert set(executions(r).values()) == {1}
    times = nominal_by_job(r)
    anchor = every.scheduled_at.timestamp() * 1000
    assert len(times[every.job_id]) == 3 and on_phase(times[every.job_id], round(anchor), 1000)
    assert len(times[cron.job_id]) == 2 and on_phase(times[cron.job_id], 0, 2000)
    assert times[later.job_id] == [at_ms]
    for call in calls(r):  # nothing ran before its time
        assert call["at_ms"] >= call["scheduled_ms"], call
    assert ductape.job.get(cron.job_id).runs_done == 2
    assert r.zcard(f"{env_prefix}:due") == 0
    # Beat released every kind of run, and the worker's pool processes ran them (each reading its
    # run's spec), without loading pydantic (~10 MB a process; bench figures 5 and 12).
    pool = descendants(worker.pid)
    assert pool and not any(maps_pydantic(pid) for pid in [beat.pid, worker.pid, *pool])
    ductape.close()


def maps_pydantic(pid: int) -> bool:
    """Whether a process has pydantic's compiled core mapped (it loads with pydantic)."""
    return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()


# -- one run per occurrence ------------------------------------------------------------------------


def test_two_beats_at_once_run_each_occurrence_exactly_once(
    procs: Processes, ductape: Ductape, r, env_prefix
):
    procs.worker(concurrency=4)
    beats = [procs.beat(**SHORT_LOCK), procs.beat(**SHORT_LOCK)]
    start = (time.time_ns() // 1_000_000) + 1_500
    handles = ductape.job.schedule_many(
        [
            {
                "env": "dev",
                "product_tag": "tests",
                "event": "echo",
                "start_at": start + (i % 3) * 100,
                "input": {"i": i},
                "repeat": {"every": 1000, "limit": 4},
            }
            for i in range(30)
        ]
    )
    job_ids = [h.job_id for h in handles]
    assert len(set(job_ids)) == 30
    wait_for(all_done(ductape, job_ids, 4), 60, "30 schedules to run 4 times each")
    wait_for(lambda: sum(executions(r).values()) >= 120, 20, "120 executions")

    ran = executions(r)
    assert sum(ran.values()) == 120 and len(ran) == 120, ran.most_common(3)
    per_job = nominal_by_job(r)
    assert sorted(per_job) == sorted(job_ids) and all(len(t) == 4 for t in per_job.values())
    assert all(p.poll() is None for p in beats), "both beats must still be running"
    assert lock_holder(r, env_prefix) in {p.pid for p in beats}


def test_beat_stopped_past_its_lock_is_fenced_when_it_resumes(
    procs: Processes, ductape: Ductape, r, env_prefix
):
    procs.worker(concurrency=4)
    first = procs.beat(**SHORT_LOCK)
    wait_for(lambda: lock_holder(r, env_prefix) == first.pid, 30, "the first beat to lead")
    second = procs.beat(**SHORT_LOCK)
    handles = ductape.job.schedule_many(
        [
            {
                "env": "dev",
                "product_tag": "tests",
                "event": "echo",
                "input": {"i": i},
                "repeat": {"every": 1000},
            }
            for i in range(10)
        ]
    )
    wait_for(lambda: sum(executions(r).values()) >= 20, 30, "the first beat to release runs")

    procs.signal(first, signal.SIGSTOP)  # frozen mid-whatever, holding its lock and its token
    wait_for(lambda: lock_holder(r, env_prefix) == second.pid, 30, "the standby to take over")
    before = sum(executions(r).values())
    wait_for(lambda: sum(executions(r).values()) >= before + 20, 30, "the successor to release runs")
    procs.signal(first, signal.SIGCONT)
    resumed = sum(executions(r).values())
    wait_for(lambda: sum(executions(r).values()) >= resumed + 30, 30, "runs after the old leader resumed")
    assert first.poll() is None and lock_holder(r, env_prefix) == second.pid

    for h in handles:
        ductape.job.cancel(h.job_id)
    wait_for(lambda: all(settled(ductape, h.job_id) for h in handles), 30, "released runs to finish")
    ran = executions(r)
    assert max(ran.values()) == 1, [run for run, n in ran.items() if n > 1]
    for h in handles:
        records = ductape.job.runs(h.job_id, 1_000)
        mine = [run for run in ran if job_id_of(run) == h.job_id]
        assert sorted(mine) == sorted(run.run_id for run in records if run.status == RunStatus.COMPLETED)
        # every claim is one run record; a slot 'overlap' skipped on a loaded machine is one too,
        # counted apart (not toward runs_done)
        job = ductape.job.get(h.job_id)
        skipped = [run for run in records if (run.error or "").startswith("repeat.overlap=")]
        assert len(records) - len(skipped) == job.runs_done and len(skipped) == job.skipped_slots
        assert on_phase(
            sorted(int(x.rsplit(":", 1)[1]) for x in mine), round(h.scheduled_at.timestamp() * 1000), 1000
        )
    wait_for(
        lambda: "lost the leader lock" in procs.log(first) or "fenced out" in procs.log(first),
        10,
        "the resumed beat to notice it lost the lock",
    )


def test_killed_leader_standby_takes_over_and_nothing_due_meanwhile_is_lost(
    procs: Processes, settings: Settings, r, env_prefix
):
    procs.worker(concurrency=2, DUCTAPE_HORIZON_MS="1000")
    leader = procs.beat(**SHORT_LOCK)
    wait_for(lambda: lock_holder(r, env_prefix) == leader.pid, 30, "the first beat to lead")
    standby = procs.beat(**SHORT_LOCK)
    ductape = client(settings, horizon_ms=1000)
    every = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        input={"kind": "every"},
        repeat={"every": 1000, "limit": 6},
    )
    wait_for(lambda: ductape.job.get(every.job_id).runs_done >= 2, 30, "two runs under the first leader")

    at_ms = (time.time_ns() // 1_000_000) + 1_200  # due while nobody leads
    gap = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", start_at=at_ms, input={"kind": "gap"}
    )
    assert gap.status == JobStatus.SCHEDULED
    procs.kill(leader)
    wait_for(lambda: lock_holder(r, env_prefix) == standby.pid, 15, "the standby to take over")
    wait_for(all_done(ductape, [every.job_id], 6), 30, "the interval job to reach its limit")
    wait_for(
        lambda: ductape.job.get(gap.job_id).status == JobStatus.COMPLETED, 15, "the one-off due in the gap"
    )

    ran = executions(r)
    assert set(ran.values()) == {1}
    times = nominal_by_job(r)
    assert times[gap.job_id] == [at_ms]
    # Slots missed while nobody led were skipped, not counted: still exactly 6 runs, on phase.
    assert len(times[every.job_id]) == 6
    assert on_phase(times[every.job_id], round(every.scheduled_at.timestamp() * 1000), 1000)
    ductape.close()


# -- delivery -------------------------------------------------------------------------------------


def broker_payloads(r: redis.Redis, prefix: str) -> list[str]:
    """Every message anywhere in the deployment's broker keys (queues, unacked)."""
    out: list[str] = []
    for key in r.scan_iter(match=f"{prefix}:broker:*"):
        kind = r.type(key)
        if kind == b"list":
            out += [v.decode() for v in r.lrange(key, 0, -1)]
        elif kind == b"hash":
            out += [v.decode() for v in r.hvals(key)]
        elif kind == b"zset":
            out += [v.decode() for v in r.zrange(key, 0, -1)]
    return out


def test_job_hours_ahead_waits_in_the_due_index_not_in_celery(
    procs: Processes, ductape: Ductape, r, env_prefix
):
    procs.worker(DUCTAPE_VISIBILITY_TIMEOUT_S="2")
    procs.beat()
    now = time.time_ns() // 1_000_000
    later = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", start_at=now + 3 * 3_600_000, input={"far": True}
    )
    cron = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        input={"far": "cron"},
        repeat={"cron": "0 0 1 1 *", "limit": 2},
    )
    soon = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"soon": True})
    wait_for(lambda: ductape.job.get(soon.job_id).status == JobStatus.COMPLETED, 30, "the immediate job")
    wait_for(lambda: lock_holder(r, env_prefix) is not None, 30, "beat to lead")

    assert r.zscore(f"{env_prefix}:due", f"j:{later.job_id}") == now + 3 * 3_600_000
    assert r.zscore(f"{env_prefix}:due", f"j:{cron.job_id}") == ductape.job.get(cron.job_id).next_run_ms
    assert ductape.job.get(later.job_id).status == JobStatus.SCHEDULED
    assert r.keys(f"{env_prefix}:broker:*"), "the broker keys live under the deployment prefix"
    payloads = broker_payloads(r, env_prefix)
    assert not [p for p in payloads if later.job_id in p or cron.job_id in p]
    assert executions(r) == Counter({ductape.job.get(soon.job_id).last_run_id: 1})


def sweep_unacked(ductape: Ductape) -> bool:
    """What every worker's periodic sweep does (each ~100 s by default, so the test runs it now):
    put messages held unacked past the visibility timeout back on their queues."""
    with ductape.celery.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=1_000, interval=1)
    return True


def received(procs: Processes, workers: list, run_id: str) -> int:
    return sum(procs.log(w).count(f"[{run_id}] received") for w in workers)


def test_small_visibility_timeout_duplicates_no_run(procs: Processes, settings: Settings, r, env_prefix):
    tight = {"DUCTAPE_VISIBILITY_TIMEOUT_S": "1"}
    workers = [procs.worker(concurrency=2, **tight), procs.worker(concurrency=2, **tight)]
    procs.beat(**tight)
    ductape = client(settings, visibility_timeout_s=1)
    now = time.time_ns() // 1_000_000
    # ETA messages a worker holds for seconds, far past the 1 s visibility timeout ...
    held = [
        ductape.job.schedule(
            env="dev", product_tag="tests", event="echo", start_at=now + 5_000 + i * 300, input={"held": i}
        )
        for i in range(4)
    ]
    # ... a run that takes longer than the visibility timeout ...
    slow = ductape.job.schedule(env="dev", product_tag="tests", event="slow", input={"seconds": 4})
    # ... and a schedule released by beat.
    every = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        input={"every": True},
        repeat={"every": 1000, "limit": 4},
    )
    slow_run = ductape.job.get(slow.job_id).last_run_id or ""
    wait_for(lambda: r.llen(calls_key("slow") + ":started") == 1, 30, "the slow run to start")
    # Redelivery happens: the held ETA messages and the running one come back to the workers.
    wait_for(
        lambda: (
            sweep_unacked(ductape)
            and received(procs, workers, slow_run) >= 2
            and all(received(procs, workers, ductape.job.get(h.job_id).last_run_id or "") >= 2 for h in held)
        ),
        30,
        "the visibility timeout to redeliver held and running messages",
    )

    job_ids = [h.job_id for h in held] + [slow.job_id]
    wait_for(
        lambda: all(ductape.job.get(j).status == JobStatus.COMPLETED for j in job_ids), 60, "one-offs done"
    )
    wait_for(all_done(ductape, [every.job_id], 4), 30, "the interval job")
    wait_for(lambda: sum(executions(r).values()) >= 8, 30, "the interval runs to execute")
    ran = executions(r)
    assert len(ran) == 8 and set(ran.values()) == {1}, ran
    assert executions(r, "slow") == Counter({slow_run: 1})
    assert r.llen(calls_key("slow") + ":started") == 1  # the copy was turned away, not started
    ductape.close()


def test_redelivered_completed_run_is_not_run_again(procs: Processes, ductape: Ductape, r, env_prefix):
    worker = procs.worker(concurrency=1)
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"once": True})
    job = wait_for(
        lambda: (j := ductape.job.get(handle.job_id)).status == JobStatus.COMPLETED and j, 30, "the run"
    )
    run_id = job.last_run_id or ""
    [before] = ductape.job.runs(handle.job_id)

    now = time.time_ns() // 1_000_000
    [dispatch] = ductape.store.run(ops.beat.dispatches(ductape.store.keys, [run_id]))
    assert isinstance(dispatch, Dispatch)
    for _ in range(2):  # the same run id delivered twice more, as a broker redelivery would
        message = ductape.messages.from_brief(run_id, dispatch.brief, dispatch.nominal_ms, now)
        r.lpush(message.queue_key, message.payload)
    wait_for(lambda: procs.log(worker).count(f"[{run_id}] received") == 3, 30, "both redeliveries to arrive")
    # Then a sentinel behind them on the same single-process worker: once it ran, they were handled.
    sentinel = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"sentinel": True})
    wait_for(lambda: ductape.job.get(sentinel.job_id).status == JobStatus.COMPLETED, 30, "the sentinel")

    assert executions(r)[run_id] == 1
    [after] = ductape.job.runs(handle.job_id)
    assert after == before  # not started again: same attempts, same timings
    assert ductape.job.get(handle.job_id).attempts == 1


# -- restarts ---------------------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis.start(appendonly=True)
    yield server
    server.stop()


def test_schedules_counts_and_limits_survive_beat_and_redis_restarts(
    own_redis: EmbeddedRedis, settings: Settings, env_prefix, tmp_path: Path
):
    procs = Processes(own_redis.url, env_prefix, tmp_path)
    tuned = {**SHORT_LOCK, "DUCTAPE_RUN_LEASE_S": "10"}
    ductape = Ductape(settings=settings.replace(**{"redis_url": own_redis.url}))
    r = redis.Redis.from_url(own_redis.url)
    try:
        procs.worker(concurrency=2, **tuned)
        beat = procs.beat(**tuned)
        every = ductape.job.schedule(
            env="dev",
            product_tag="tests",
            event="echo",
            input={"kind": "every"},
            # 'allow': a run held up by the restarts must not skip the slots after it
            repeat={"every": 2000, "limit": 6, "overlap": "allow"},
        )
        far_at = (time.time_ns() // 1_000_000) + 5 * 3_600_000
        far = ductape.job.schedule(env="dev", product_tag="tests", event="echo", start_at=far_at, input={})
        paused = ductape.job.schedule(
            env="dev",
            product_tag="tests",
            event="echo",
            input={"kind": "paused"},
            repeat={"cron": "0 9 * * *", "tz": "America/New_York"},
        )
        ductape.job.pause(paused.job_id)
        wait_for(lambda: ductape.job.get(every.job_id).runs_done >= 2, 30, "two runs")

        procs.kill(beat)  # beat restart: a new process picks up the same schedules
        procs.beat(**tuned)
        wait_for(lambda: ductape.job.get(every.job_id).runs_done >= 3, 30, "a run from the new beat")

        # Redis restart, timed just after a run finished so no handler is mid-flight.
        done_before = ductape.job.get(every.job_id).runs_done
        wait_for(
            lambda: (
                ductape.job.get(every.job_id).runs_done > done_before
                and ductape.job.runs(every.job_id, 1)[0].status == "completed"
            ),
            30,
            "a fresh completed run",
        )
        state_before = ductape.job.get(every.job_id)
        own_redis.kill()
        own_redis.launch()
        state_after = ductape.job.get(every.job_id)
        assert (state_after.runs_done, state_after.next_run_ms) == (
            state_before.runs_done,
            state_before.next_run_ms,
        )

        wait_for(
            all_done(ductape, [every.job_id], 6), 60, "the interval job to reach its limit after restarts"
        )
        wait_for(
            lambda: all(run.status == "completed" for run in ductape.job.runs(every.job_id)),
            30,
            "the last runs to execute",
        )
        ran = executions(r)
        assert set(ran.values()) == {1} and len(ran) == 6, ran
        assert on_phase(nominal_by_job(r)[every.job_id], round(every.scheduled_at.timestamp() * 1000), 2000)
        assert r.zscore(f"{env_prefix}:due", f"j:{far.job_id}") == far_at
        assert ductape.job.get(far.job_id).status == JobStatus.SCHEDULED
        assert ductape.job.get(paused.job_id).status == JobStatus.PAUSED
        assert r.zscore(f"{env_prefix}:due", f"j:{every.job_id}") is None
    finally:
        procs.stop_all()
        ductape.close()
        r.close()


def test_beat_warns_at_start_when_redis_can_evict_keys(own_redis: EmbeddedRedis, env_prefix, tmp_path: Path):
    procs = Processes(own_redis.url, env_prefix, tmp_path)
    r = redis.Redis.from_url(own_redis.url)
    try:
        safe = procs.beat()
        wait_for(lambda: lock_holder(r, env_prefix) == safe.pid, 30, "the beat to start and lead")
        assert "maxmemory-policy" not in procs.log(safe)  # noeviction: nothing to warn about
        procs.kill(safe)
        r.delete(f"{env_prefix}:beat:lock")

        r.config_set("maxmemory-policy", "allkeys-lru")
        risky = procs.beat()
        wait_for(lambda: "maxmemory-policy is 'allkeys-lru'" in procs.log(risky), 30, "the eviction warning")
        assert "noeviction" in procs.log(risky)  # the message names the fix
    finally:
        procs.stop_all()
        r.close()
