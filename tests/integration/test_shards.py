"""Shards over a real Redis: every key of a job in its shard's space, the producer's batch split
per shard, identity entries found in the shard of their job, and beats sharing the shards (a
registry of live beats, a lock and fencing token per shard, a dead beat's shards taken over)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from beat import leader
from beat.engine import BeatEngine, Release, TickReport
from beat.metrics import BeatMetrics
from ductape_jobs import AsyncDuctape, Ductape, ops
from ductape_jobs.celery_app import create_app
from ductape_jobs.cli.doctor import probe
from ductape_jobs.keys import Keys, route_of
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.store import DueEntry, Retention, Store
from ductape_jobs.wire import MessageBuilder
from tests.support import wait_for

SHARDS = 4
T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z: every instant below is chosen, none is read
HOUR = 3_600_000
TTL_MS = 600
ECHO = {"env": "dev", "product_tag": "tests", "event": "echo"}


@pytest.fixture
def sharded(settings: Settings) -> Settings:
    return settings.replace(**{"shards": SHARDS, "beat_lock_ttl_ms": TTL_MS})


@pytest.fixture
def store(redis_url: str, sharded: Settings) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_url)
    yield Store(client, Keys(sharded.key_prefix, SHARDS), Retention.of(sharded))
    client.close()


@pytest.fixture
def app(sharded: Settings) -> Iterator[Celery]:
    celery = create_app(sharded)
    yield celery
    celery.close()


@pytest.fixture
def client(sharded: Settings) -> Iterator[Ductape]:
    ductape = Ductape(settings=sharded)
    yield ductape
    ductape.close()


def plan_many(store: Store, settings: Settings, now_ms: int, requests: list[dict[str, Any]]) -> list[str]:
    plans = [
        plan_job(
            JobRequest.parse({"env": "dev", "product_tag": "tests", "event": "echo", **fields}),
            settings,
            Sessions({}),
            now_ms,
            uuid.uuid4().hex,
        )
        for fields in requests
    ]
    return [job_id for job_id, _ in store.run(ops.create_jobs(store.keys, plans, now_ms))]


def sent_run_ids(store: Store, settings: Settings) -> list[str]:
    """The run ids of every message on the deployment's queues (the Celery task ids)."""
    ids = []
    for env in settings.envs:
        for raw in store.redis.lrange(store.keys.broker_prefix + settings.queue_for(env), 0, -1):
            args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.append(args[0])
    return ids


def engine(store: Store, settings: Settings, app: Celery, instance: str) -> BeatEngine:
    return BeatEngine(store, settings, MessageBuilder(app, settings), instance)


def test_every_key_of_a_job_lives_in_its_shards_space(client: Ductape, store: Store, r: redis.Redis):
    keys, prefix = store.keys, store.keys.prefix
    handles = client.job.schedule_many(
        [
            {"env": "dev", "product_tag": "tests", "event": "echo", "input": {"i": i}, "start_at": T0}
            for i in range(40)
        ]
        + [
            {
                "env": "dev",
                "product_tag": "tests",
                "event": "echo",
                "input": {"i": i},
                "repeat": {"every": 60_000},
            }
            for i in range(40)
        ]
    )
    by_shard: dict[int, set[str]] = {}
    for handle in handles:
        shard = keys.shard_of(handle.job_id)
        by_shard.setdefault(shard, set()).add(handle.job_id)
        space = f"{prefix}:{{{prefix}.{shard}}}"
        assert keys.job(handle.job_id) == f"{space}:job:{handle.job_id}"
        assert r.exists(f"{space}:job:{handle.job_id}")
        assert r.zscore(f"{space}:due", f"j:{handle.job_id}") is not None
        assert r.zscore(f"{space}:jobs", handle.job_id) is not None
    assert sorted(by_shard) == list(range(SHARDS))  # 80 random ids over 4 shards
    # Nothing is written under the unsharded names.
    assert not r.exists(f"{prefix}:due") and not r.exists(f"{prefix}:jobs")
    listed = client.job.list(limit=1000)
    assert sorted(j.job_id for j in listed) == sorted(h.job_id for h in handles)


def test_identity_entries_find_their_job_in_its_shard(client: Ductape, store: Store, r: redis.Redis):
    request = {"env": "dev", "product_tag": "tests", "event": "echo", "input": {"n": 1}}
    first = client.job.schedule({**request, "repeat": {"every": 60_000}})
    again = client.job.schedule({**request, "repeat": {"every": 60_000}})
    assert again.job_id == first.job_id  # the fingerprint's entry, in the job's shard
    fp = r.hget(store.keys.job(first.job_id), "fp")
    assert fp is not None and fp.decode().startswith(store.keys.of_job(first.job_id).space + ":fp:")

    keyed = [client.job.schedule({**request, "key": f"k-{i}", "start_at": T0}) for i in range(8)]
    for i, handle in enumerate(keyed):
        assert handle.job_id.startswith(route_of(f"k-{i}"))
        assert client.job.schedule({**request, "key": f"k-{i}", "start_at": T0}).job_id == handle.job_id
    once = [client.job.schedule({**request, "idempotency_key": f"i-{i}", "start_at": T0}) for i in range(8)]
    for i, handle in enumerate(once):
        assert (
            client.job.schedule({**request, "idempotency_key": f"i-{i}", "start_at": T0}).job_id
            == handle.job_id
        )
    assert len({store.keys.shard_of(h.job_id) for h in keyed + once}) > 1


def test_management_calls_reach_the_shard_of_their_job(client: Ductape, store: Store):
    handles = client.job.schedule_many([{**ECHO, "input": {"i": i}, "start_at": T0} for i in range(64)])
    one_per_shard = {store.keys.shard_of(h.job_id): h for h in handles}  # 64 ids: every shard
    assert sorted(one_per_shard) == list(range(SHARDS))
    for handle in one_per_shard.values():
        client.job.pause(handle.job_id)
        assert client.job.get(handle.job_id).status == "paused"
        client.job.resume(handle.job_id)
        run_id = client.job.trigger(handle.job_id)
        assert run_id in [run.run_id for run in client.job.runs(handle.job_id)]
        client.job.cancel(handle.job_id)
        assert client.job.get(handle.job_id).status == "cancelled"


def test_two_beats_share_the_shards_and_release_each_run_once(store: Store, sharded: Settings, app: Celery):
    at = T0 + HOUR
    job_ids = plan_many(store, sharded, T0, [{"start_at": at, "input": {"i": i}} for i in range(200)])
    first = engine(store, sharded, app, "beat-a")
    assert first.tick(T0).shards == list(range(SHARDS))  # alone: it leads every shard
    second = engine(store, sharded, app, "beat-b")

    def balanced() -> bool:
        a, b = first.tick(T0), second.tick(T0)
        return len(a.shards) == len(b.shards) == SHARDS // 2

    wait_for(balanced, 10, "the beats to hold two shards each")
    a, b = first.tick(at), second.tick(at)
    assert sorted(a.shards + b.shards) == list(range(SHARDS))
    assert a.released + b.released == 200 and a.released > 0 and b.released > 0
    assert sorted(sent_run_ids(store, sharded)) == sorted(f"{j}:{at}" for j in job_ids)
    for shard in range(SHARDS):
        assert store.redis.zcard(store.keys.for_shard(shard).due) == 0


def test_a_dead_beats_shards_are_taken_over_and_a_stale_one_is_fenced_out(
    store: Store, sharded: Settings, app: Celery
):
    at = T0 + HOUR
    job_ids = plan_many(store, sharded, T0, [{"start_at": at, "input": {"i": i}} for i in range(100)])
    survivor, dying = engine(store, sharded, app, "beat-a"), engine(store, sharded, app, "beat-b")
    wait_for(lambda: [len(survivor.tick(T0).shards), len(dying.tick(T0).shards)] == [2, 2], 10, "a balance")
    stale = dying.leadership.tokens

    # beat-b stops (killed, or SIGSTOPped): its locks and its registry entry run out together.
    wait_for(lambda: len(survivor.tick(T0).shards) == SHARDS, 10, "beat-a to take beat-b's shards")
    for shard, token in stale.items():
        taken = store.redis.get(store.keys.for_shard(shard).beat_lock)
        assert taken is not None and int(taken.split(b":")[0]) > int(token.split(":")[0])

    # beat-b wakes up between its read and its claim: the claim script refuses its old tokens.
    shard, token = sorted(stale.items())[0]
    keys = store.keys.for_shard(shard)
    entries: list[DueEntry] = store.run(ops.beat.due_entries(keys, at, 1_000))
    assert entries
    claims = [dying._decide(entry, at) for entry in entries]
    assert store.run(ops.beat.claim(keys, store.retention, token, claims, at, 100)) is None
    assert sent_run_ids(store, sharded) == []

    report = survivor.tick(at)
    assert report.released == 100
    assert sorted(sent_run_ids(store, sharded)) == sorted(f"{j}:{at}" for j in job_ids)
    # Back, beat-b registers again; beat-a gives up its extra shards to it, nothing is sent twice.
    wait_for(
        lambda: [len(dying.tick(at).shards), len(survivor.tick(at).shards)] == [2, 2], 10, "a new balance"
    )
    assert len(sent_run_ids(store, sharded)) == 100


def test_step_down_hands_every_shard_over_at_once(store: Store, sharded: Settings, app: Celery):
    leaving, staying = engine(store, sharded, app, "beat-a"), engine(store, sharded, app, "beat-b")
    assert leaving.tick(T0).shards == list(range(SHARDS))
    assert staying.tick(T0).shards == []
    leaving.step_down()
    assert store.run(ops.beat.live_beats(store.keys, 0)) == ["beat-b"]
    wait_for(lambda: staying.tick(T0).shards == list(range(SHARDS)), 10, "beat-b to lead every shard")


def test_failed_counts_are_reported_by_the_leader_of_the_schedules_shard(
    client: Ductape, store: Store, sharded: Settings
):
    handles = client.job.schedule_many(
        [{**ECHO, "input": {"i": i}, "start_at": T0, "repeat": {"every": 60_000}} for i in range(16)]
    )
    report = TickReport(leader=True)
    report.releases = [Release(h.job_id, "tests", "echo", "dev", True, 0, 0) for h in handles]
    for handle in handles:
        store.redis.hincrby(store.keys.job(handle.job_id), "failed_runs", 1)
    led = {0, 1}
    metrics = BeatMetrics(store, lambda: True, sharded, shards_led=lambda: led)
    metrics.observe(report)
    metrics.refresh(T0)
    reported = {labels[0] for labels in metrics.failed_counts()}
    ours = {h.job_id for h in handles if store.keys.shard_of(h.job_id) in led}
    assert reported == ours and 0 < len(ours) < len(handles)


def test_doctor_checks_every_shards_lock_and_lists_the_live_beats(
    store: Store, sharded: Settings, app: Celery
):
    findings = {f.check: f for f in probe(sharded, 3.0)[0]}
    assert findings["beats"].status == "fail" and "no live beat" in findings["beats"].detail
    assert all(findings[f"beat shard {k}"].status == "fail" for k in range(SHARDS))
    first, second = engine(store, sharded, app, "beat-a"), engine(store, sharded, app, "beat-b")
    wait_for(lambda: [len(first.tick(T0).shards), len(second.tick(T0).shards)] == [2, 2], 10, "balance")
    findings = {f.check: f for f in probe(sharded, 3.0)[0]}
    assert findings["beats"].status == "ok" and "2 live beat(s) share 4 shards" in findings["beats"].detail
    holders = {findings[f"beat shard {k}"].detail.split()[1] for k in range(SHARDS)}
    assert all(findings[f"beat shard {k}"].status == "ok" for k in range(SHARDS))
    assert {h.rsplit(":", 1)[1] for h in holders} == {"beat-a", "beat-b"}


def test_the_async_client_schedules_lists_and_dedupes_over_the_shards(sharded: Settings, store: Store):
    async def body(ductape: AsyncDuctape) -> tuple[list[str], list[str], str, str]:
        handles = await ductape.job.schedule_many(
            [{**ECHO, "input": {"i": i}, "start_at": T0} for i in range(40)]
        )
        listed = [j.job_id for j in await ductape.job.list(limit=100)]
        keyed = await ductape.job.schedule({**ECHO, "input": {}, "key": "async", "start_at": T0})
        again = await ductape.job.schedule({**ECHO, "input": {}, "key": "async", "start_at": T0})
        return [h.job_id for h in handles], listed, keyed.job_id, again.job_id

    made, listed, keyed, again = asyncio.run(_with_async(sharded, body))
    assert sorted(listed) == sorted(made) and again == keyed and keyed.startswith(route_of("async"))
    assert {store.keys.shard_of(j) for j in made} == set(range(SHARDS))


async def _with_async(settings: Settings, body: Any) -> Any:
    async with AsyncDuctape(settings=settings) as ductape:
        return await body(ductape)


def test_a_sealed_schedule_is_found_across_a_key_rotation_in_its_shard(sharded: Settings):
    # Its fingerprint changes with the session key (input_digest), its shard must not: the twin
    # written under the old key is looked up in the shard of the job the new key would make.
    old, new = "test-secret-not-for-prod-0123456789abcdef", "rotated-secret-not-for-prod-0123456789abcd"
    with Ductape(settings=sharded) as before:
        token = before.sessions.start("user-session", {"email": "ada@example.com"})
        requests = [
            {
                **ECHO,
                "input": {"to": "$Session{email}", "n": n},
                "repeat": {"every": 60_000},
                "start_at": "2999-01-01T00:00:00Z",
                "session": {"tag": "user-session", "token": token},
            }
            for n in range(8)
        ]
        first = [before.job.schedule(request).job_id for request in requests]
    rotated = sharded.replace(**{"sessions": {"user-session": {"secrets": [new, old]}}})
    with Ductape(settings=rotated) as after:
        assert [after.job.schedule(request).job_id for request in requests] == first


def test_step_down_asked_inside_a_tick_of_the_same_thread_does_not_hang(
    store: Store, sharded: Settings, app: Celery, monkeypatch: pytest.MonkeyPatch
):
    # Celery's SIGTERM handler closes the scheduler in the main thread, which may be inside
    # lead() or renew(), holding the leadership's (non re-entrant) lock: that step-down must give
    # up instead of waiting on itself forever; the one after the handler unwound steps down.
    monkeypatch.setattr(leader, "STEP_DOWN_WAIT_S", 0.05)
    leaving, staying = engine(store, sharded, app, "beat-a"), engine(store, sharded, app, "beat-b")
    assert leaving.tick(T0).shards == list(range(SHARDS))
    with leaving.leadership._lock:  # as when the signal arrives inside lead()
        assert leaving.step_down() is False
    assert leaving.leadership.held
    assert store.run(ops.beat.live_beats(store.keys, 0)) == ["beat-a"]
    assert leaving.step_down() is True
    assert store.run(ops.beat.live_beats(store.keys, 0)) == []
    wait_for(lambda: staying.tick(T0).shards == list(range(SHARDS)), 10, "beat-b to lead every shard")
