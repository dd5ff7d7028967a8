"""The job hash's layout (jobfields.py, design §6.3): a typical job's hash stays a listpack, and a
record written in the layout before (``spec`` and ``brief`` JSON) is read by every reader (get,
list, upcoming, beat's READ_DUE and lost sweep, BEGIN_RUN, LOSE_RUN, SWEEP) and rewritten in
today's layout by an update."""

from __future__ import annotations

import dataclasses

import redis
from celery import Celery

from ductape_jobs import Ductape, jobfields, ops
from ductape_jobs.clock import now_ms
from ductape_jobs.settings import Settings
from tests.integration.test_beat_engine import celery_app, engine_for  # noqa: F401
from tests.old_layout import to_old_layout

MIN = 60_000
HOUR = 60 * MIN


def test_a_typical_schedule_is_one_small_listpack_hash_without_spec_json(ductape: Ductape, r: redis.Redis):
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", input={"n": 1}, repeat={"every": HOUR}
    )
    key = ductape.store.keys.job(handle.job_id)
    stored = r.hgetall(key)
    assert not {b"spec", b"brief"} & set(stored)
    assert b"cr" not in stored  # the spec's created_ms is the job's own: read from created_ms
    assert b"updated_ms" not in stored  # not changed since: read as its created_ms
    assert {b"env", b"tag", b"ev", b"every", b"in", b"ar"} <= set(stored)
    # Every value within hash-max-listpack-value (64 bytes by default): the hash stays compact.
    assert max(len(v) for v in stored.values()) <= 64
    assert r.object("encoding", key) == b"listpack"
    assert int(r.memory_usage(key, samples=0) or 0) < 600  # 1,478 bytes as spec and brief JSON
    job = ductape.job.get(handle.job_id)
    assert job.spec.input == {"n": 1} and job.updated_ms == job.created_ms == job.spec.created_ms


def test_an_old_layout_record_is_read_by_every_reader_and_an_update_rewrites_it(
    ductape: Ductape,
    settings: Settings,
    celery_app: Celery,  # noqa: F811
    r: redis.Redis,
):
    store, keys = ductape.store, ductape.store.keys
    start = now_ms() + HOUR
    handle = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        input={"n": 1},
        retries=2,
        start_at=start,
        repeat={"every": MIN, "limit": 5, "overlap": "allow"},
    )
    job_id, key = handle.job_id, keys.job(handle.job_id)
    before = ductape.job.get(job_id)
    upcoming = ductape.job.upcoming(job_id, 3)
    to_old_layout(r, key)
    assert {f for f in jobfields.fields(r.hgetall(key)) if f in jobfields.ALL} == {"spec", "brief"}

    # The producer's reads.
    assert ductape.job.get(job_id) == before
    assert [j.job_id for j in ductape.job.list()] == [job_id]
    assert ductape.job.upcoming(job_id, 3) == upcoming
    # Beat reads its brief (READ_DUE) and releases its first run.
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(start).released == 1 and queues.nominal(job_id) == [start]
    run_id = f"{job_id}:{start}"
    [dispatch] = store.run(ops.beat.dispatches(keys, [run_id]))  # the lost sweep's read
    assert dispatch.brief.event == "echo"  # type: ignore[union-attr]
    # The worker reads its spec (BEGIN_RUN); a lost attempt reads its retries (LOSE_RUN).
    started = store.begin_run(run_id, job_id, start + 1, 60_000, "host:1:aaaa")
    assert started.verdict == "run" and started.spec == before.spec
    lost = store.run(ops.worker.lose_run(keys, store.retention, run_id, "host:1:", "killed", start + 2))
    assert lost == "retry"  # attempt 1 of 3 (retries=2 read from the old spec)

    # An update writes the spec in today's layout, and drops the old fields.
    updated = ductape.job.update(job_id, input={"n": 2})
    stored = jobfields.fields(r.hgetall(key))
    assert "spec" not in stored and "brief" not in stored and stored["in"] == '{"n":2}'
    assert updated.spec == dataclasses.replace(before.spec, input={"n": 2})
    assert ductape.job.get(job_id) == updated


def test_a_paused_old_layout_schedule_past_its_end_completes_at_the_sweep(ductape: Ductape, r: redis.Redis):
    store, keys = ductape.store, ductape.store.keys
    now = now_ms()
    handle = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        start_at=now + MIN,
        repeat={"every": MIN, "endDate": now + 2 * MIN},
    )
    ductape.job.pause(handle.job_id)
    to_old_layout(r, keys.job(handle.job_id))
    store.run(ops.beat.sweep(keys, store.retention, now + 3 * MIN, 100, 0))
    assert ductape.job.get(handle.job_id).status == "completed"  # its end read from the old brief
