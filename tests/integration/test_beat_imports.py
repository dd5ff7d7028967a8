"""A Celery app's beat_schedule synced by the beat engine over real Redis (time is an argument)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from beat.engine import BeatEngine
from beat.imported import beat_schedule
from ductape_jobs import Ductape, ops
from ductape_jobs.errors import JobStateError
from ductape_jobs.imported import ImportCounts, job_id_for
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from ductape_jobs.terms import JobStatus, RunStatus
from ductape_jobs.wire import MessageBuilder

T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z
APP = "proj"


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_url)
    yield Store(client, Keys(prefix))
    client.close()


def app_with(redis_url: str, prefix: str, entries: dict[str, dict[str, Any]]) -> Celery:
    app = Celery(APP, broker=redis_url)
    app.conf.broker_transport_options = {"global_keyprefix": f"{prefix}:app:"}
    app.conf.beat_schedule = entries
    return app


def engine(store: Store, settings: Settings, app: Celery, instance: str = "a") -> BeatEngine:
    imports = beat_schedule(app, settings)
    assert imports is not None
    return BeatEngine(store, settings, MessageBuilder(app, settings), instance, imports=imports)


def sent(store: Store, prefix: str, queue: str = "celery") -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(task id, args, kwargs) of each message on the app's queue, oldest first."""
    out = []
    for raw in reversed(store.redis.lrange(f"{prefix}:app:{queue}", 0, -1)):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["id"], args, kwargs))
    return out


def status(store: Store, job_id: str) -> str:
    return store.redis.hget(store.keys.job(job_id), "status").decode()


ADD = {"task": "proj.add", "schedule": 10.0, "args": (2, 3)}


def test_an_entry_sends_its_own_task_each_slot_recorded_sent_and_never_in_flight(
    store: Store, settings: Settings, redis_url: str, prefix: str
) -> None:
    beat = engine(store, settings, app_with(redis_url, prefix, {"add": ADD}))
    job_id = job_id_for(APP, "add")
    for at in (T0, T0 + 10_000, T0 + 20_000):
        assert beat.tick(at).leader
    assert sent(store, prefix) == [(f"{job_id}:{T0 + n * 10_000}", [2, 3], {}) for n in range(3)]
    runs = store.run(ops.get_runs(store.keys, store.run(ops.recent_run_ids(store.keys, job_id, 10))))
    assert {run.status for run in runs} == {RunStatus.SENT}
    assert store.redis.zcard(store.keys.inflight) == 0  # no runner reports on it: never resent


def test_sync_creates_leaves_alone_updates_in_place_and_removes(
    store: Store, settings: Settings, redis_url: str, prefix: str
) -> None:
    greet = {"task": "proj.greet", "schedule": timedelta(minutes=1), "kwargs": {"n": 1}}
    first = engine(store, settings, app_with(redis_url, prefix, {"add": ADD, "greet": greet}))
    first.tick(T0)
    add_id, greet_id = job_id_for(APP, "add"), job_id_for(APP, "greet")
    assert status(store, add_id) == status(store, greet_id) == JobStatus.SCHEDULED
    first.step_down()

    # Same config from another beat: nothing written (the next run stays where it was).
    next_before = store.redis.hget(store.keys.job(add_id), "next_run_ms")
    imports = beat_schedule(app_with(redis_url, prefix, {"add": ADD, "greet": greet}), settings)
    assert imports is not None
    token = store.run(ops.beat.acquire_lock(store.keys, "b", 5_000))[1]
    assert store.run(
        ops.beat.sync_imported(
            store.keys, store.retention, token, APP, imports.rows(T0 + 5_000)[0], T0 + 5_000
        )
    ) == ImportCounts(0, 0, 2, 0)
    assert store.redis.hget(store.keys.job(add_id), "next_run_ms") == next_before
    store.run(ops.beat.release_lock(store.keys, token))

    # "add" changed, "greet" gone: "add" is updated in place (same job, its runs kept), with its
    # version bumped as UPDATE_JOB bumps it, so a claim decided from the old entry fails.
    version_before = int(store.redis.hget(store.keys.job(add_id), "version") or 0)
    changed = engine(store, settings, app_with(redis_url, prefix, {"add": {**ADD, "args": (7, 7)}}), "c")
    changed.tick(T0 + 30_000)
    assert int(store.redis.hget(store.keys.job(add_id), "version") or 0) == version_before + 1
    assert status(store, greet_id) == JobStatus.CANCELLED
    assert store.redis.zscore(store.keys.due, f"j:{greet_id}") is None
    assert store.redis.hkeys(store.keys.imported(APP)) == [add_id.encode()]
    assert [args for task_id, args, _ in sent(store, prefix) if task_id.startswith(add_id)] == [
        [2, 3],
        [7, 7],
    ]
    assert store.redis.zcard(store.keys.job_runs(add_id)) == 2


def test_an_entry_cancelled_by_hand_comes_back_at_the_next_sync(
    store: Store, settings: Settings, redis_url: str, prefix: str
) -> None:
    beat = engine(store, settings, app_with(redis_url, prefix, {"add": ADD}))
    beat.tick(T0)
    job_id = job_id_for(APP, "add")
    store.change_state("cancel", job_id, T0 + 1_000)
    beat.step_down()
    again = engine(store, settings, app_with(redis_url, prefix, {"add": ADD}), "b")
    again.tick(T0 + 2_000)
    assert status(store, job_id) == JobStatus.SCHEDULED
    assert store.redis.zscore(store.keys.retired, job_id) is None  # the sweep must not take it


def test_a_sync_under_a_stale_token_writes_nothing(
    store: Store, settings: Settings, redis_url: str, prefix: str
) -> None:
    assert beat_schedule(app_with(redis_url, prefix, {}), settings) is None  # nothing to import
    imports = beat_schedule(app_with(redis_url, prefix, {"add": ADD}), settings)
    assert imports is not None
    token = store.run(ops.beat.acquire_lock(store.keys, "a", 5_000))[1]
    assert (
        store.run(
            ops.beat.sync_imported(
                store.keys, store.retention, "stale:" + token, APP, imports.rows(T0)[0], T0
            )
        )
        is None
    )
    assert not store.redis.exists(store.keys.imported(APP), store.keys.job(job_id_for(APP, "add")))


def test_two_beats_ticking_together_import_once(
    store: Store, settings: Settings, redis_url: str, prefix: str
) -> None:
    config = {"add": ADD}
    a = engine(store, settings, app_with(redis_url, prefix, config), "a")
    b = engine(store, settings, app_with(redis_url, prefix, config), "b")
    reports = [a.tick(T0), b.tick(T0), a.tick(T0 + 10_000), b.tick(T0 + 10_000)]
    assert [r.leader for r in reports] == [True, False, True, False]
    assert [task_id for task_id, _, _ in sent(store, prefix)] == [
        f"{job_id_for(APP, 'add')}:{T0}",
        f"{job_id_for(APP, 'add')}:{T0 + 10_000}",
    ]


def test_trigger_and_backfill_of_an_imported_entry_are_refused(
    store: Store, settings: Settings, redis_url: str, prefix: str
) -> None:
    engine(store, settings, app_with(redis_url, prefix, {"add": ADD})).tick(T0)
    job_id = job_id_for(APP, "add")
    with Ductape(settings=settings) as ductape:
        for call in (
            lambda: ductape.job.trigger(job_id),
            lambda: ductape.job.backfill(job_id, T0, T0 + 20_000),
        ):
            with pytest.raises(JobStateError, match=r"imported beat_schedule entry 'add'.*app\.send_task"):
                call()
    assert store.redis.zcard(store.keys.job_runs(job_id)) == 1  # the slot beat released, nothing added
