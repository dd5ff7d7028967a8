"""repeat.overlap over real Redis: the beat engine ticked at chosen instants, runs started and
finished through the worker's own scripts (BEGIN_RUN, FINISH_RUN), so the claim script sees
exactly what a worker would leave behind."""

from __future__ import annotations

from celery import Celery

from beat.engine import BeatEngine
from ductape_jobs import ops
from ductape_jobs.models import JobRecord
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from ductape_jobs.terms import JobStatus, RunStatus, run_id_for
from tests.integration.test_beat_engine import (
    MIN,
    T0,
    Queues,
    celery_app,
    client,
    engine_for,
    schedule,
    store,
)
from tests.old_layout import to_old_layout

__all__ = ["celery_app", "client", "store"]  # fixtures, imported for pytest

LEASE_MS = 60_000


def start(store: Store, run_id: str, at: int) -> int:
    """BEGIN_RUN as a worker calls it; the attempt."""
    started = store.begin_run(run_id, run_id.rsplit(":", 1)[0], at, LEASE_MS, f"host:1:{run_id}")
    assert started.verdict == "run", started
    return started.attempt


def finish(store: Store, run_id: str, at: int) -> None:
    attempt = start(store, run_id, at)
    assert store.finish_run(run_id, run_id.rsplit(":", 1)[0], attempt, at, "completed")


def statuses(store: Store, job_id: str) -> dict[int, RunStatus]:
    runs = store.run(ops.get_runs(store.keys, store.run(ops.recent_run_ids(store.keys, job_id, 100))))
    return {run.nominal_ms: run.status for run in runs}


def job(store: Store, job_id: str) -> JobRecord:
    got = store.run(ops.get_job(store.keys, job_id))
    assert isinstance(got, JobRecord), got
    return got


def slot(job_id: str, n: int) -> str:
    """The run id of the schedule's n-th slot (from 1), every minute from T0 + MIN."""
    return run_id_for(job_id, T0 + n * MIN)


def one_buffered(store: Store, settings: Settings, app: Celery) -> tuple[str, BeatEngine, Queues]:
    """A buffer_one schedule whose slot 2 waits behind slot 1 (queued, unfinished)."""
    job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "buffer_one"})
    engine, queues = engine_for(store, settings, app)
    ticked(engine, 1, 2)
    return job_id, engine, queues


def ticked(engine: BeatEngine, *minutes: int) -> list[int]:
    """Tick at T0 + each minute; how many runs each tick released."""
    return [engine.tick(T0 + m * MIN).released for m in minutes]


def test_skip_skips_a_slot_while_the_previous_run_is_queued_or_running_and_counts_it(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "skip"})
    engine, queues = engine_for(store, settings, celery_app)
    assert ticked(engine, 1, 2) == [1, 0]  # slot 2: slot 1 still queued
    start(store, slot(job_id, 1), T0 + 2 * MIN + 1)
    assert ticked(engine, 3) == [0]  # slot 3: slot 1 running
    record = job(store, job_id)
    assert (record.skipped_slots, record.runs_done, record.next_run_ms) == (2, 1, T0 + 4 * MIN)
    runs = store.run(ops.get_runs(store.keys, [slot(job_id, 2)]))
    assert runs[0].status == RunStatus.SKIPPED
    assert "repeat.overlap=skip" in (runs[0].error or "") and slot(job_id, 1) in (runs[0].error or "")
    assert queues.nominal(job_id) == [T0 + MIN]  # nothing sent for the skipped slots

    finish(store, slot(job_id, 1), T0 + 3 * MIN + 1)
    assert ticked(engine, 4) == [1]  # free again: released, on phase
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 4 * MIN]
    assert statuses(store, job_id) == {
        T0 + MIN: RunStatus.COMPLETED,
        T0 + 2 * MIN: RunStatus.SKIPPED,
        T0 + 3 * MIN: RunStatus.SKIPPED,
        T0 + 4 * MIN: RunStatus.QUEUED,
    }


def test_skipped_slots_do_not_count_toward_limit(store: Store, settings: Settings, celery_app: Celery):
    job_id = schedule(
        store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "limit": 2, "overlap": "skip"}
    )
    engine, queues = engine_for(store, settings, celery_app)
    assert ticked(engine, 1, 2) == [1, 0]  # slot 2 would have been the last: skipped, not counted
    assert job(store, job_id).status == JobStatus.SCHEDULED
    finish(store, slot(job_id, 1), T0 + 2 * MIN + 1)
    assert ticked(engine, 3) == [1]
    record = job(store, job_id)
    assert (record.status, record.runs_done, record.skipped_slots) == (JobStatus.COMPLETED, 2, 1)
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 3 * MIN]


def test_the_first_run_released_by_schedule_itself_is_waited_on(
    store: Store, settings: Settings, celery_app: Celery
):
    # Due now: CREATE_JOBS releases the first run itself; the job has no slot_run yet.
    job_id = schedule(store, settings, T0, start_at=0, repeat={"every": MIN, "overlap": "skip"})
    engine, _ = engine_for(store, settings, celery_app)
    assert ticked(engine, 1) == [0]
    assert job(store, job_id).skipped_slots == 1
    finish(store, run_id_for(job_id, T0), T0 + MIN + 1)
    assert ticked(engine, 2) == [1]


def test_allow_overlaps_and_a_rule_stored_without_the_field_overlaps(
    store: Store, settings: Settings, celery_app: Celery
):
    allow = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "allow"})
    older = schedule(
        store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "skip"}, input={"o": 1}
    )
    to_old_layout(store.redis, store.keys.job(older))  # the layout before jobfields.py
    for field in ("spec", "brief"):  # as written before repeat.overlap existed
        key = store.keys.job(older)
        raw = store.redis.hget(key, field).decode()
        store.redis.hset(key, field, raw.replace(',"overlap":"skip"', ""))
    assert '"overlap"' not in store.redis.hget(store.keys.job(older), "brief").decode()
    engine, queues = engine_for(store, settings, celery_app)
    assert ticked(engine, 1, 2, 3) == [2, 2, 2]  # nothing finishes, everything is sent
    assert queues.nominal(allow) == queues.nominal(older) == [T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN]
    assert job(store, allow).skipped_slots == job(store, older).skipped_slots == 0


def test_buffer_one_keeps_one_run_waiting_and_sends_it_when_the_running_one_finishes(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "buffer_one"})
    engine, queues = engine_for(store, settings, celery_app)
    assert ticked(engine, 1) == [1]
    start(store, slot(job_id, 1), T0 + MIN + 1)
    engine.tick(T0 + 2 * MIN)  # slot 2 buffered behind slot 1: recorded, counted toward limit, not sent
    assert statuses(store, job_id)[T0 + 2 * MIN] == RunStatus.BUFFERED
    engine.tick(T0 + 3 * MIN)  # slot 3: one already waits, so it is skipped
    record = job(store, job_id)
    assert (record.runs_done, record.skipped_slots) == (2, 1)
    assert statuses(store, job_id)[T0 + 3 * MIN] == RunStatus.SKIPPED
    engine.tick(T0 + 3 * MIN + 2_000)  # the buffered run looks again: slot 1 still running
    assert queues.nominal(job_id) == [T0 + MIN]

    finish(store, slot(job_id, 1), T0 + 3 * MIN + 3_000)
    engine.tick(T0 + 3 * MIN + 4_000)
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 2 * MIN]  # sent as soon as it looked again
    assert statuses(store, job_id)[T0 + 2 * MIN] == RunStatus.QUEUED
    # Slot 4 finds the buffered one sent but unfinished: buffered behind it in turn.
    engine.tick(T0 + 4 * MIN)
    assert statuses(store, job_id)[T0 + 4 * MIN] == RunStatus.BUFFERED
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 2 * MIN]


def test_a_buffered_run_of_a_cancelled_schedule_ends_skipped(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id, engine, queues = one_buffered(store, settings, celery_app)
    assert store.change_state("cancel", job_id, T0 + 2 * MIN + 1)[0] == "ok"
    # slot 1, queued when the cancel came, is skipped by the worker; the buffered one by beat
    assert store.begin_run(slot(job_id, 1), job_id, T0 + 2 * MIN + 2, LEASE_MS, "host:1:x").verdict == "skip"
    engine.tick(T0 + 2 * MIN + 2_000)
    assert statuses(store, job_id)[T0 + 2 * MIN] == RunStatus.SKIPPED
    assert queues.nominal(job_id) == [T0 + MIN]
    assert store.run(ops.beat.next_due_ms(store.keys)) is None  # nothing of it is left to look at


def test_the_decision_is_the_claims_own_a_run_finishing_after_beat_decided_is_seen(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "skip"})
    engine, queues = engine_for(store, settings, celery_app)
    ticked(engine, 1)
    # Beat reads the due slot while slot 1 runs; it finishes before the claim goes out.
    store.after_read = lambda entries: finish(store, slot(job_id, 1), T0 + 2 * MIN - 1)
    assert ticked(engine, 2) == [1]
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 2 * MIN]
    # And the other way round: decided while free, started by a redelivery before the claim.
    store.after_read = lambda entries: start(store, slot(job_id, 2), T0 + 3 * MIN - 1)
    assert ticked(engine, 3) == [0]
    assert job(store, job_id).skipped_slots == 1


def test_a_standby_beat_claiming_the_same_slot_skips_nothing_twice_and_sends_nothing_twice(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "overlap": "skip"})
    first, queues = engine_for(store, settings, celery_app, "beat-a")
    ticked(first, 1, 2)
    first.step_down()
    standby, _ = engine_for(store, settings, celery_app, "beat-b")
    # The standby reads the index again at the same instant: the slot has moved on already.
    assert standby.tick(T0 + 2 * MIN).released == 0
    assert job(store, job_id).skipped_slots == 1
    assert queues.nominal(job_id) == [T0 + MIN]


def test_a_buffered_run_is_a_slot_taken_a_pause_does_not_hold_it_back(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id, engine, queues = one_buffered(store, settings, celery_app)
    assert store.change_state("pause", job_id, T0 + 2 * MIN + 1)[0] == "ok"
    finish(store, slot(job_id, 1), T0 + 2 * MIN + 2)
    engine.tick(T0 + 2 * MIN + 2_000)
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 2 * MIN]  # sent as runs already out are
    assert job(store, job_id).status == JobStatus.PAUSED


def test_cancel_run_of_a_buffered_run_ends_it_and_the_schedule_goes_on(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id, engine, queues = one_buffered(store, settings, celery_app)
    cancel = ops.cancel_run(
        store.keys, slot(job_id, 2), T0 + 2 * MIN + 1, terminate=False, job_retention_s=60
    )
    assert store.run(cancel) == ("ok", "buffered")  # not started: it never starts
    assert statuses(store, job_id)[T0 + 2 * MIN] == RunStatus.CANCELLED
    finish(store, slot(job_id, 1), T0 + 2 * MIN + 2)
    assert ticked(engine, 3) == [1]  # nothing waits any more: the next slot goes
    assert queues.nominal(job_id) == [T0 + MIN, T0 + 3 * MIN]
