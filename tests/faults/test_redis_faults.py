"""Redis killed and restarted under load, and Redis unreachable when a job is scheduled."""

from __future__ import annotations

import re
import signal
import threading
import time
from typing import Any

import pytest
import redis

from ductape_jobs import BackendUnavailableError, Ductape, Settings, jobfields
from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.terms import job_id_of
from tests.faults.conftest import Report, calls, executions, lock_holder, nominal, now_ms
from tests.support import Processes, wait_for

pytestmark = pytest.mark.faults

FAST = {
    "DUCTAPE_BEAT_LOCK_TTL_MS": "1500",
    "DUCTAPE_VISIBILITY_TIMEOUT_S": "3",
    # Longer than the outage below: an outcome is held and written again only within its run's
    # lease (a lease that ran out while Redis was down means the attempt is taken as lost).
    "DUCTAPE_RUN_LEASE_S": "10",
}


def deployment(server: EmbeddedRedis, prefix: str, **overrides: Any) -> Ductape:
    """A client on the private server."""
    settings = Settings(
        redis_url=server.url,
        key_prefix=prefix,
        handlers=("tests.handlers",),
        require_handler=False,
        **overrides,
    )
    return Ductape(settings=settings)


def job_state(r: redis.Redis, prefix: str, job_id: str) -> dict[str, str]:
    """The stored fields that must survive a restart."""
    raw = r.hgetall(f"{prefix}:job:{job_id}")
    return {
        k.decode(): v.decode()
        for k, v in raw.items()
        if k.decode() in ("status", "runs_done", "next_run_ms", *jobfields.SPEC)
    }


def test_redis_restart_mid_stream_keeps_everything_and_reconnects(
    private_redis: EmbeddedRedis,
    private_procs: Processes,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
):
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)
    ductape = deployment(private_redis, prefix, socket_timeout_s=2)
    r = redis.Redis.from_url(private_redis.url)
    worker = private_procs.worker(concurrency=2, **FAST)
    beat = private_procs.beat(**FAST)
    wait_for(lambda: lock_holder(r, prefix) == beat.pid, 30, "beat to lead")

    base = {"env": "dev", "product_tag": "tests", "event": "echo"}
    # 'allow': a run caught by the kill must not hold back the slots after it (the default 'skip').
    # Retries: the handler records its call on this same server, so a run caught by the kill fails
    # by its own handler's hand (ConnectionError) and, with no retry, never records a call.
    endless = ductape.job.schedule(
        **base, input={"k": "endless"}, retries=2, repeat={"every": 1000, "overlap": "allow"}
    )
    limited = ductape.job.schedule(
        **base, input={"k": "limited"}, retries=2, repeat={"every": 1000, "limit": 8, "overlap": "allow"}
    )
    far = ductape.job.schedule(**base, input={"k": "far"}, start_at=now_ms() + 3_600_000)
    cron = ductape.job.schedule(**base, input={"k": "cron"}, repeat={"cron": "0 0 1 1 *", "limit": 3})
    paused = ductape.job.schedule(
        **base, input={"k": "paused"}, repeat={"every": 60_000}, start_at=now_ms() + 60_000
    )
    ductape.job.pause(paused.job_id)
    poison = ductape.job.schedule(env="dev", product_tag="tests", event="flaky", retries=0, input={})
    wait_for(lambda: len(ductape.job.failed()) == 1, 30, "the poison job to be dead-lettered")
    wait_for(lambda: ductape.job.get(limited.job_id).runs_done >= 3, 30, "three runs of the limited schedule")
    operations = 6

    still = [far.job_id, cron.job_id, paused.job_id, poison.job_id]
    moving = [endless.job_id, limited.job_id]
    before = {j: job_state(r, prefix, j) for j in still + moving}
    dead_before = r.zrange(f"{prefix}:dead", 0, -1, withscores=True)
    due_before = {
        m: s for m, s in r.zrange(f"{prefix}:due", 0, -1, withscores=True) if m.decode()[2:] in still
    }

    private_redis.kill()  # SIGKILL: only what the AOF holds comes back
    time.sleep(2.0)  # down long enough for worker, beat and client to notice
    with pytest.raises(BackendUnavailableError):
        ductape.job.schedule(**base, input={"k": "while down"})
    private_redis.launch()
    restarted_ms = now_ms()

    after = {j: job_state(r, prefix, j) for j in still + moving}
    assert {j: after[j] for j in still} == {j: before[j] for j in still}
    for j in moving:  # progress made before the kill is kept; the limit still holds
        assert int(after[j]["runs_done"]) >= int(before[j]["runs_done"])
    assert int(after[limited.job_id]["runs_done"]) <= 8
    assert r.zrange(f"{prefix}:dead", 0, -1, withscores=True) == dead_before
    assert {
        m: s for m, s in r.zrange(f"{prefix}:due", 0, -1, withscores=True) if m in due_before
    } == due_before
    assert [d.run_id for d in ductape.job.failed()] == [ductape.job.get(poison.job_id).last_run_id]

    # No manual step: the same worker and beat pick up where they were, the client reconnects.
    after_restart = ductape.job.schedule(**base, input={"k": "after restart"})
    operations += 1
    try:
        wait_for(
            lambda: ductape.job.get(after_restart.job_id).status.value == "completed",
            60,
            "a job scheduled after",
        )
    except AssertionError:
        tails = {p.pid: private_procs.log(p)[-3000:] for p in (worker, beat)}
        raise AssertionError(f"{ductape.job.get(after_restart.job_id)!r}\n{tails}") from None
    wait_for(
        lambda: any(
            job_id_of(run) == endless.job_id and nominal(run) > restarted_ms for run in executions(r, "echo")
        ),
        60,
        "the endless schedule to run again after the restart",
    )

    def limited_runs() -> list[str]:
        return [run for run in executions(r, "echo") if job_id_of(run) == limited.job_id]

    deadline = time.monotonic() + 60
    while len(limited_runs()) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    ran = executions(r, "echo")
    assert worker.poll() is None and beat.poll() is None
    duplicated = sum(n - 1 for n in ran.values())
    lost = 8 - len(limited_runs())
    report(
        "5 Redis SIGKILLed and restarted (AOF)",
        operations + len(ran),
        1,
        lost,
        duplicated,
        survived=len(still) + len(moving),
        dead_letters_kept=len(dead_before),
    )
    assert duplicated == 0 and lost == 0
    assert ductape.job.get(limited.job_id).runs_done == 8
    ductape.close()
    r.close()


def stuck_runs(r: redis.Redis, prefix: str, job_ids: list[str], procs: Processes) -> list[Any]:
    """What a run that never completed left behind: its records, where its message is, the logs."""
    out: list[Any] = []
    for job_id in job_ids:
        job = r.hgetall(f"{prefix}:job:{job_id}")
        if job.get(b"status") == b"completed":
            continue
        run_id = job.get(b"last_run_id", b"").decode()
        where = [k.decode() for k in r.scan_iter(match=f"{prefix}:broker:*") if run_id.encode() in r.dump(k)]
        lines = [ln for p in procs.running for ln in procs.log(p).splitlines() if job_id in ln]
        out.append((job.get(b"status"), r.hgetall(f"{prefix}:run:{run_id}"), where, lines[-20:]))
    return out[:3]


def snapshot(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix with its type and content."""
    out: dict[str, Any] = {}
    for key in r.scan_iter(match=f"{prefix}:*"):
        kind = r.type(key).decode()
        value: Any = {
            "hash": lambda k: r.hgetall(k),
            "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: sorted(r.smembers(k)),
            "string": lambda k: r.get(k),
        }[kind](key)
        out[key.decode()] = (kind, value)
    return out


REQUESTS: list[dict[str, Any]] = [
    {"env": "dev", "product_tag": "tests", "event": "echo", "input": {"now": True}},
    {"env": "dev", "product_tag": "tests", "event": "echo", "start_at": 4_102_444_800, "input": {}},
    {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}, "repeat": {"every": 5000}},
    {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}, "repeat": {"cron": "*/5 * * * *"}},
]


def test_schedule_while_redis_is_down_fails_fast_and_writes_nothing(
    private_redis: EmbeddedRedis, prefix: str, report: Report
):
    timeout_s = 1.0
    bound_s = 2 * timeout_s + 1  # one timed-out attempt, with room for a slow machine
    ductape = deployment(private_redis, prefix, socket_timeout_s=timeout_s)
    r = redis.Redis.from_url(private_redis.url)
    ductape.job.schedule(REQUESTS[0])  # a warm connection pool, as a running producer has
    before = snapshot(r, prefix)
    refused = 0
    slowest_s = 0.0

    # Down: nothing listens (connection refused).
    private_redis.kill()
    for request in REQUESTS:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as err:
            ductape.job.schedule(request)
        slowest_s = max(slowest_s, time.monotonic() - started)
        assert "REDIS_URL" in str(err.value) and private_redis.url not in str(err.value)
        refused += 1
    with pytest.raises(BackendUnavailableError):
        ductape.job.schedule_many(REQUESTS)
    refused += 1
    private_redis.launch()
    assert snapshot(r, prefix) == before

    # Hung: the server accepts connections but never answers (SIGSTOP), so each call times out.
    assert private_redis.proc is not None
    ductape.job.schedule(REQUESTS[0])
    before = snapshot(r, prefix)
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        for request in REQUESTS[1:]:
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError):
                ductape.job.schedule(request)
            slowest_s = max(slowest_s, time.monotonic() - started)
            refused += 1
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    # A command the stopped server had already received runs when it wakes: atomically, so a
    # job is there whole or not at all, never in part.
    wait_for(lambda: r.ping(), 10, "the server to answer again")
    new = {k: v for k, v in snapshot(r, prefix).items() if before.get(k) != v}
    half = half_written(new, prefix)
    report(
        "6 schedule() while Redis is down / hung",
        refused,
        2,
        0,
        0,
        half_written=len(half),
        slowest_s=round(slowest_s, 2),
        landed_after_timeout=sum(1 for k in new if k.startswith(f"{prefix}:job:")),
    )
    assert not half, half
    assert slowest_s <= bound_s, f"a refused schedule() took {slowest_s:.1f}s, over {bound_s}s"
    ductape.close()
    r.close()


def half_written(changed: dict[str, Any], prefix: str) -> list[str]:
    """Job keys among ``changed`` without the rest of what CREATE_JOBS writes with them."""
    problems = []
    jobs_index = changed.get(f"{prefix}:jobs", ("zset", []))[1]
    indexed = {m.decode() for m, _ in jobs_index}
    for key, (_, fields) in changed.items():
        if not key.startswith(f"{prefix}:job:"):
            continue
        job_id = key.rsplit(":", 1)[1]
        if not {b"env", b"status", b"created_ms"} <= set(fields) or job_id not in indexed:
            problems.append(key)
        run_id = fields.get(b"last_run_id")
        if run_id and f"{prefix}:run:{run_id.decode()}" not in changed:
            problems.append(f"{key} (run {run_id.decode()})")
    return problems


def test_redis_restart_with_hundreds_of_runs_in_flight_doubles_nothing_and_kills_no_worker(
    private_redis: EmbeddedRedis,
    private_procs: Processes,
    prefix: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
):
    # Handlers record on the session's server (not restarted), so what they did is never lost.
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)
    records = redis.Redis.from_url(redis_url)
    ductape = deployment(private_redis, prefix, socket_timeout_s=2)
    r = redis.Redis.from_url(private_redis.url)
    # Each worker process reserves 8 messages: every worker holds prefetched messages at the kill.
    # A 10 s visibility timeout makes beat look for lost messages (popped by a worker as Redis
    # died, never recorded as held) after 10 s instead of a minute.
    held = {
        "TEST_RECORD_URL": redis_url,
        "DUCTAPE_PREFETCH_MULTIPLIER": "8",
        "DUCTAPE_SOCKET_TIMEOUT_S": "2",
        "DUCTAPE_VISIBILITY_TIMEOUT_S": "10",
    }
    workers = [private_procs.worker(concurrency=2, **held) for _ in range(2)]
    beat = private_procs.beat(**held)
    wait_for(lambda: lock_holder(r, prefix) == beat.pid, 30, "beat to lead")
    total = 600
    handles = ductape.job.schedule_many(
        [
            {"env": "dev", "product_tag": "tests", "event": "work", "retries": 2, "input": {"ms": 40, "i": i}}
            for i in range(total)
        ]
    )
    job_ids = [h.job_id for h in handles]
    wait_for(lambda: len(executions(records, "work", prefix)) >= 40, 60, "runs to be under way")
    in_flight = r.zcard(f"{prefix}:inflight")
    held_at_kill = r.hlen(f"{prefix}:broker:unacked")

    private_redis.kill()  # SIGKILL: only what the AOF holds comes back
    time.sleep(2.0)  # down long enough for every worker and the beat to lose their connections
    private_redis.launch()

    def completed() -> int:
        with r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(f"{prefix}:job:{job_id}", "status")
            return sum(1 for s in pipe.execute() if s == b"completed")

    deadline = time.monotonic() + 120
    while completed() < total and time.monotonic() < deadline:
        time.sleep(0.2)
    ran = executions(records, "work", prefix)
    logs = "".join(private_procs.log(w) for w in workers)
    exited = [w.pid for w in workers if w.poll() is not None]
    lost = total - completed()
    duplicated = sum(n - 1 for n in ran.values())
    report(
        "10 Redis SIGKILLed + AOF restart, 600 runs in flight, prefetched messages held",
        total,
        1,
        lost,
        duplicated,
        in_flight_at_kill=in_flight,
        held_at_kill=held_at_kill,
        worker_exits=len(exited),
        attribute_errors=logs.count("AttributeError"),
        resent_by_beat=sum(int(n) for n in re.findall(r"sent (\d+) run\(s\) again", private_procs.log(beat))),
        put_back_on_reconnection=sum(int(n) for n in re.findall(r"put back (\d+) message", logs)),
    )
    assert held_at_kill > 4 and in_flight > 100  # messages were prefetched and runs under way
    twice = {run for run, n in ran.items() if n > 1}
    assert lost == 0, stuck_runs(r, prefix, job_ids, private_procs)
    assert duplicated == 0, (
        [c for c in calls(records, "work", prefix) if c["run_id"] in twice],
        {run: r.hgetall(f"{prefix}:run:{run}") for run in twice},
        [p.log_path for p in private_procs.running],  # type: ignore[attr-defined]
    )
    assert not exited and "AttributeError" not in logs
    ductape.close()
    r.close()
    records.close()


def test_a_threads_first_call_while_redis_restarts_is_unreachable_and_written_once_it_is_back(
    private_redis: EmbeddedRedis, prefix: str
) -> None:
    # A worker's heartbeat thread may make its first call (confirming a completion sent without
    # waiting) while Redis restarts: opening that thread's connection fails. It must be Redis
    # unreachable like any other call, which the runner tries again until Redis is back; as a raw
    # ConnectionError it escaped that retry once, the run stayed 'running' and ran twice.
    ductape = deployment(private_redis, prefix)
    job_id = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={}).job_id
    store = ductape.store
    [run_id] = [m.decode() for m in store.redis.zrange(store.keys.inflight, 0, -1)]
    started = store.begin_run(run_id, job_id, now_ms(), 60_000, "the-delivery")

    def finish() -> bool:
        return store.finish_run(
            run_id, job_id, started.attempt, now_ms(), "completed", result_json="null", wait=True
        )

    outcomes: list[object] = []

    def first_call_of_a_new_thread() -> None:
        try:
            outcomes.append(finish())
        except Exception as exc:  # what it raised is the point
            outcomes.append(exc)

    private_redis.kill()
    thread = threading.Thread(target=first_call_of_a_new_thread)
    thread.start()
    thread.join(30)
    private_redis.launch()
    assert len(outcomes) == 1 and isinstance(outcomes[0], BackendUnavailableError), outcomes
    again = threading.Thread(target=first_call_of_a_new_thread)
    again.start()
    again.join(30)
    assert outcomes[1] is True
    assert store.redis.hget(store.keys.run(run_id), "status") == b"completed"
    ductape.close()
