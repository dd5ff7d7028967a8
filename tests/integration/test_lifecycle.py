"""Every record has a lifecycle: finished jobs, trimmed runs and dead letters leave Redis, and a
record that vanishes early is counted, never silent. Real Redis; beat's engine, the worker's
runner and the sweep are driven at chosen instants (time is an argument, never slept through)."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from celery import Celery
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beat.engine import BeatEngine
from beat.health import RedisWatch
from beat.metrics import BeatMetrics
from ductape_jobs import Ductape, ops
from ductape_jobs.celery_app import create_app
from ductape_jobs.cli.doctor import probe
from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRequest
from ductape_jobs.ops import Flow
from ductape_jobs.planning import plan_job
from ductape_jobs.registry import Registry, RunContext
from ductape_jobs.runner import Runner
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from ductape_jobs.wire import MessageBuilder
from tests.old_layout import to_old_layout

T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z
SEC = 1_000
MIN = 60_000
RETENTION_S = 3_600
T = TypeVar("T")
DEAD_RETENTION_S = 7_200


def _ok(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    return {"ok": input}


def _boom(input: dict[str, Any], ctx: RunContext) -> None:
    raise RuntimeError("boom")


REGISTRY = Registry()
REGISTRY.add("life", "ok", _ok)
REGISTRY.add("life", "boom", _boom)


class World:
    """One deployment driven by hand: a producer, a beat engine, a worker, a clock."""

    def __init__(self, client: redis.Redis, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.store = Store(client, Keys(settings.key_prefix), Retention.of(settings))
        self.keys = self.store.keys
        self.engine = BeatEngine(self.store, settings, MessageBuilder(app, settings), "beat-a")
        self.now = T0
        self.runner = Runner(self.store, REGISTRY, settings, lambda: self.now)
        self.queues = [self.keys.broker_prefix + settings.queue_for(env) for env in settings.envs]

    def schedule(self, event: str = "ok", **fields: Any) -> str:
        request = {"env": "dev", "product_tag": "life", "event": event, "input": {"n": 1}, **fields}
        build = self.engine.messages.build  # a run due now comes with its message, as schedule() does
        plan = plan_job(
            JobRequest.parse(request), self.settings, Sessions({}), self.now, uuid.uuid4().hex, build
        )
        [(job_id, _)] = self.op(ops.create_jobs, [plan], self.now)
        return job_id

    def op(self, flow: Callable[..., Flow[T]], *args: Any, **kwargs: Any) -> T:
        """Drive one of the flows of ops/ on this deployment's store."""
        return self.store.run(flow(self.keys, *args, **kwargs))

    def at(self, now_ms: int) -> World:
        """Move the clock, tick beat once, and let the worker run every message waiting."""
        self.now = now_ms
        self.engine.tick(now_ms)
        self.work()
        return self

    def work(self) -> list[str]:
        ran = []
        for queue in self.queues:
            while (raw := self.store.redis.rpop(queue)) is not None:
                message = json.loads(raw)
                [run_id], _, _ = json.loads(base64.b64decode(message["body"]))
                self.runner.execute(run_id)
                ran.append(run_id)
        return ran

    def keys_now(self) -> set[str]:
        return {k.decode() for k in self.store.redis.scan_iter(match=f"{self.keys.prefix}:*", count=1_000)}

    def counters(self) -> dict[str, int]:
        return self.store.run(ops.beat.counters(self.store.keys))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def lifecycle_settings(settings: Settings) -> Settings:
    return settings.replace(
        **{
            "job_retention_s": RETENTION_S,
            "run_retention_s": RETENTION_S,
            "dead_retention_s": DEAD_RETENTION_S,
            "runs_kept": 3,
        }
    )


@pytest.fixture
def app(lifecycle_settings: Settings) -> Iterator[Celery]:
    celery = create_app(lifecycle_settings)
    yield celery
    celery.close()


@pytest.fixture
def world(client: redis.Redis, lifecycle_settings: Settings, app: Celery) -> World:
    return World(client, lifecycle_settings, app)


def test_finished_jobs_leave_after_retention_with_everything_pointing_at_them(world: World):
    world.engine.tick(T0 - 1)  # beat's own keys (its lock and fencing counter) are the baseline
    baseline = world.keys_now()

    done = [world.schedule(input={"n": n}) for n in range(3)]  # one-offs, run at once
    later = world.schedule(start_at=T0 + 5 * MIN)  # a one-off beat releases
    limited = world.schedule(repeat={"every": MIN, "limit": 2})  # a schedule that completes
    cancelled = world.schedule(repeat={"every": MIN})  # a schedule cancelled after one run
    failing = world.schedule("boom", retries=0)  # dead-lettered
    for minute in range(6):
        world.at(T0 + minute * MIN)
        if minute == 1:
            assert world.store.change_state("cancel", cancelled, world.now) == ("ok", None)
    status = {j: world.op(ops.get_job, j).status.value for j in [*done, later, limited, cancelled, failing]}  # type: ignore[union-attr]
    assert list(status.values()) == ["completed"] * 5 + ["cancelled", "failed"]
    [dead_run] = world.op(ops.dead_run_ids, 10)
    assert world.store.redis.ttl(world.keys.job(limited)) > RETENTION_S  # the backstop TTL

    # Within the retention everything is still there ...
    world.store.run(
        ops.beat.sweep(
            world.store.keys, world.store.retention, world.now + RETENTION_S * SEC - 6 * MIN, 1_000, 0
        )
    )
    assert len(world.op(ops.job_ids)) == 7

    # ... after it, each finished job is gone with its runs, index entries and fingerprints;
    # the dead letter stays for its own retention, and so does its job (a redrive needs it).
    swept = world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, T0 + 5 * MIN + RETENTION_S * SEC, 1_000, 0)
    )
    assert swept.jobs_expired == 6 and swept.dead_dropped == 0
    left = world.keys_now() - baseline
    kept = {world.keys.job(failing), world.keys.job_runs(failing), world.keys.run(dead_run)}
    assert left == {world.keys.dead, world.keys.retired, world.keys.jobs, world.keys.stats} | kept, left
    assert world.op(ops.dead_run_ids, 10) == [dead_run]
    assert world.store.redis.ttl(world.keys.job(failing)) > DEAD_RETENTION_S  # the backstop TTL too

    swept = world.store.run(
        ops.beat.sweep(
            world.store.keys, world.store.retention, T0 + 5 * MIN + DEAD_RETENTION_S * SEC, 1_000, 0
        )
    )
    assert swept.dead_dropped == 1 and swept.jobs_expired == 1
    assert world.keys_now() - baseline == {world.keys.stats}
    assert world.counters() == {"jobs_expired": 7, "dead_dropped": 1}


def test_a_dead_letter_can_be_redriven_on_its_last_day_after_the_jobs_own_retention(world: World):
    job_id = world.schedule("boom", retries=0)
    world.at(T0)
    run_id = f"{job_id}:{T0}"
    assert world.op(ops.dead_run_ids, 10) == [run_id]
    last_day = T0 + (DEAD_RETENTION_S - 60) * SEC  # past the job's retention, within the dead letter's
    world.store.run(ops.beat.sweep(world.store.keys, world.store.retention, last_day, 1_000, 0))
    job = world.op(ops.get_job, job_id)
    assert job is not None  # before, JobNotFoundError here: the job left after RETENTION_S
    message = world.engine.messages.build(run_id, job.spec, last_day, last_day)
    assert world.op(ops.add_run, "redrive", job_id, run_id, last_day, message, runs_kept=100) == ("ok", None)


def test_a_paused_schedule_whose_end_date_passed_is_finished_and_leaves(world: World):
    ending = world.schedule(start_at=T0 + MIN, repeat={"every": MIN, "endDate": T0 + 3 * MIN})
    open_ended = world.schedule(start_at=T0 + MIN, repeat={"every": MIN})
    for job_id in (ending, open_ended):
        assert world.store.change_state("pause", job_id, T0) == ("ok", None)
    world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, T0 + 3 * MIN, 1_000, 0)
    )  # the end date itself may still run (inclusive)
    assert world.op(ops.get_job, ending).status.value == "paused"  # type: ignore[union-attr]
    swept = world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, T0 + 3 * MIN + 1, 1_000, 0)
    )
    assert swept.retired == 1
    assert world.op(ops.get_job, ending).status.value == "completed"  # type: ignore[union-attr]
    assert world.op(ops.get_job, open_ended).status.value == "paused"  # type: ignore[union-attr]
    world.store.run(
        ops.beat.sweep(
            world.store.keys, world.store.retention, T0 + 3 * MIN + 1 + RETENTION_S * SEC, 1_000, 0
        )
    )
    assert world.op(ops.get_job, ending) is None and world.op(ops.get_job, open_ended) is not None


def test_listing_skips_records_that_have_gone(world: World, ductape: Ductape):
    kept, gone = world.schedule(), world.schedule()
    failing = [world.schedule("boom", retries=0) for _ in range(2)]
    world.at(T0)
    world.store.redis.delete(world.keys.job(gone))  # as if evicted, or expired by its TTL
    world.store.redis.delete(world.keys.run(f"{kept}:{T0}"), world.keys.run(f"{failing[0]}:{T0}"))

    assert {job.job_id for job in ductape.job.list()} == {kept, *failing}
    assert ductape.job.runs(kept) == []
    assert [run.run_id for run in ductape.job.failed()] == [f"{failing[1]}:{T0}"]

    swept = world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, world.now, 1_000, 0)
    )  # the audit finds the entry whose record went
    assert swept.jobs_vanished == 1 and gone not in world.op(ops.job_ids)
    assert world.counters()["jobs_vanished"] == 1


def test_a_schedule_keeps_runs_kept_run_records_and_deletes_older_ones(world: World):
    job_id = world.schedule(repeat={"every": MIN})
    for minute in range(8):
        world.at(T0 + minute * MIN)
    runs = world.store.redis.zrange(world.keys.job_runs(job_id), 0, -1)
    stored = list(world.store.redis.scan_iter(match=world.keys.run(f"{job_id}:*")))
    assert len(runs) == 3 and len(stored) == 3
    assert sorted(stored) == sorted(world.keys.run(r.decode()).encode() for r in runs)


def test_dead_letters_beyond_the_cap_are_dropped_and_counted(
    client: redis.Redis, lifecycle_settings: Settings, app: Celery, ductape: Ductape
):
    world = World(client, lifecycle_settings.replace(**{"dead_max": 2}), app)
    failing = [world.schedule("boom", retries=0, input={"n": n}) for n in range(5)]
    for n in range(5):  # one failure a second, so the dead letters have an order
        world.now = T0 + n * SEC
        world.runner.execute(f"{failing[n]}:{T0}")
    swept = world.store.run(ops.beat.sweep(world.store.keys, world.store.retention, world.now, 1_000, 0))
    assert swept.dead_dropped == 3 and world.counters()["dead_dropped"] == 3
    assert [run.job_id for run in ductape.job.failed()] == [failing[4], failing[3]]
    assert not world.store.redis.exists(*(world.keys.run(f"{j}:{T0}") for j in failing[:3]))


def test_a_redriven_failure_stays_until_it_finishes_again(world: World):
    job_id = world.schedule("boom", retries=0)
    world.at(T0)
    assert world.store.redis.zscore(world.keys.retired, job_id) is not None
    run_id = f"{job_id}:{T0}"
    job = world.op(ops.get_job, job_id)
    assert job is not None
    message = world.engine.messages.build(run_id, job.spec, T0, T0)
    assert world.op(ops.add_run, "redrive", job_id, run_id, T0 + SEC, message, runs_kept=100) == ("ok", None)
    assert world.store.redis.zscore(world.keys.retired, job_id) is None
    assert (
        world.store.redis.ttl(world.keys.job(job_id)) == -1
        and world.store.redis.ttl(world.keys.run(run_id)) == -1
    )
    world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, T0 + DEAD_RETENTION_S * SEC * 2, 1_000, 0)
    )
    assert world.op(ops.get_job, job_id) is not None  # queued again: not finished, never swept


def test_a_due_entry_whose_job_vanished_is_logged_and_counted(world: World, caplog: pytest.LogCaptureFixture):
    job_id = world.schedule(start_at=T0 + 10 * MIN)  # beyond the horizon: waits for beat
    world.store.redis.delete(world.keys.job(job_id))
    with caplog.at_level(logging.WARNING, logger="beat"):
        world.at(T0 + 10 * MIN)
    assert world.store.redis.zcard(world.keys.due) == 0
    # the sweep's pass over the jobs index finds the same job's entry there
    assert world.counters() == {"due_vanished": 1, "jobs_vanished": 1}
    assert f"due entry j:{job_id}" in caplog.text and "gone" in caplog.text


def test_a_run_that_vanished_fails_its_one_off_instead_of_leaving_it_queued(
    world: World, ductape: Ductape, caplog: pytest.LogCaptureFixture
):
    delivered, lost, retry = world.schedule(), world.schedule(), world.schedule()
    for job_id in (delivered, lost, retry):
        world.store.redis.delete(world.keys.run(f"{job_id}:{T0}"))
    # A retry waiting in the due index for a run whose record is gone:
    world.store.redis.zadd(world.keys.due, {f"r:{retry}:{T0}": T0})
    world.store.redis.delete(*world.queues)  # the lost one's message is gone too
    with caplog.at_level(logging.WARNING):
        world.runner.execute(f"{delivered}:{T0}")  # a worker finds the run record gone
        world.engine.tick(T0)  # beat claims the retry entry
        world.engine.tick(T0 + 2 * MIN)  # beat's lost-run sweep finds the in-flight one gone
    assert world.counters() == {"runs_vanished": 2, "due_vanished": 1}
    for job_id in (delivered, lost, retry):
        job = ductape.job.get(job_id)
        assert job.status.value == "failed" and "vanished" in (job.last_error or ""), job_id
    failed = {run.run_id: run for run in ductape.job.failed()}
    assert set(failed) == {f"{j}:{T0}" for j in (delivered, lost, retry)}
    assert "vanished" in caplog.text
    assert world.store.redis.zcard(world.keys.inflight) == 0


def test_a_run_whose_spec_this_worker_cannot_read_fails_at_once_and_sets_its_job_aside(
    world: World, ductape: Ductape, caplog: pytest.LogCaptureFixture
):
    # A spec this worker's models refuse (written by hand, or by a newer version): before, the run
    # stayed 'running' until lease after lease ran out, and the worker raised a ValidationError.
    job_id = world.schedule(retries=3)
    to_old_layout(world.store.redis, world.keys.job(job_id))  # the spec as one JSON field
    spec = json.loads(world.store.redis.hget(world.keys.job(job_id), "spec"))
    world.store.redis.hset(world.keys.job(job_id), "spec", json.dumps({**spec, "from_the_future": 1}))
    with caplog.at_level(logging.ERROR):
        [run_id] = world.work()
    [run] = world.op(ops.get_runs, [run_id])
    assert (run.status.value, run.attempts) == ("failed", 1)
    assert "could not read the job's spec" in (run.error or "")
    assert [r.run_id for r in ductape.job.failed()] == [run_id]  # a dead letter, never retried
    assert world.store.redis.zscore(world.keys.set_aside, job_id) is not None
    assert world.store.redis.zcard(world.keys.inflight) == 0
    assert "set aside" in caplog.text and "from_the_future" in caplog.text


def test_beat_rechecks_eviction_and_memory_and_doctor_and_metrics_show_them(prefix: str):
    server = EmbeddedRedis.start(appendonly=False)
    client = redis.Redis.from_url(server.url)
    try:
        settings = Settings(redis_url=server.url, key_prefix=prefix, require_handler=False)
        store = Store(client, Keys(prefix), Retention.of(settings))
        watch = RedisWatch(store, every_ms=30_000)
        assert watch.check(T0) == []
        client.config_set("maxmemory-policy", "allkeys-lru")
        reading = store.run(ops.beat.memory())
        assert reading is not None
        used = reading[0]
        client.config_set("maxmemory", str(int(used * 1.1)))
        client.hset(Keys(prefix).stats, mapping={"runs_vanished": 2, "jobs_expired": 5})
        assert watch.check(T0 + 29_999) is None  # not yet time to look again
        problems = watch.check(T0 + 30_000)
        assert problems is not None
        assert [p.detail.split(" ")[0] for p in problems] == ["maxmemory-policy", "used_memory", "5"]

        findings, _, _ = probe(settings, 3.0)
        checks = {f.check: f for f in findings}
        assert checks["eviction"].status == checks["memory"].status == checks["records"].status == "warn"
        assert "2 run" in checks["records"].detail and "5 finished job(s)" in checks["records"].detail

        scraped = generate_latest(BeatMetrics(store, lambda: True, settings).registry).decode()
        samples = {
            (s.name, tuple(s.labels.items())): s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
        }
        assert samples[("ductape_records_vanished_total", (("record", "run"),))] == 2
        assert samples[("ductape_jobs_expired_total", ())] == 5
        assert samples[("ductape_redis_eviction_safe", ())] == 0
        assert samples[("ductape_redis_maxmemory_bytes", ())] == int(used * 1.1)
        assert samples[("ductape_redis_used_memory_bytes", ())] > 0
    finally:
        client.config_set("maxmemory", "0")
        client.close()
        server.stop()


def test_registrations_of_workers_unseen_for_the_retention_are_dropped(world: World):
    # Containers come back under new hostnames: registrations of the ones long gone must not pile up.
    world.store.run(ops.worker.register_worker(world.store.keys, "gone-host", ["life/ok"], ["dev"], T0))
    world.store.run(
        ops.worker.register_worker(
            world.store.keys, "live-host", ["life/ok"], ["dev"], T0 + RETENTION_S * 1000
        )
    )
    swept = world.engine.sweeper.sweep(T0 + RETENTION_S * 1000 + 1)
    assert swept is not None and swept.workers_forgotten == 1
    assert world.store.redis.hkeys(world.keys.workers) == [b"live-host"]
