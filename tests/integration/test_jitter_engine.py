"""Jitter over real Redis: the beat engine ticked at chosen instants releases each run at its slot
plus its offset under the slot's run id, a second engine agrees, lateness counts from the jittered
time, and both clients show the same times and refuse bad input writing nothing."""

from __future__ import annotations

import asyncio

import pytest
from celery import Celery

from ductape_jobs import AsyncDuctape, Ductape, JobStatus, JobValidationError
from ductape_jobs.jitter import Spread, offset_ms
from ductape_jobs.models import Repeat
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from tests.integration.test_beat_engine import (
    MIN,
    T0,
    celery_app,
    client,
    engine_for,
    job_state,
    schedule,
    store,
)
from tests.integration.test_beat_engine import due_members as due_index

__all__ = ["celery_app", "client", "store"]  # fixtures, imported for pytest

JITTER = 50_000
EVERY = {"every": MIN, "jitter_ms": JITTER}


def spread_of(store: Store, job_id: str, **repeat: object) -> Spread:
    rule = Repeat.model_validate(repeat).to_rule()
    return Spread(rule, job_id, int(job_state(store, job_id)["anchor_ms"]))


def test_runs_fall_due_at_slot_plus_offset_keep_slot_ids_and_a_second_beat_agrees(
    store: Store, settings: Settings, celery_app: Celery, ductape: Ductape
):
    start = T0 + MIN
    job_id = schedule(store, settings, T0, start_at=start, repeat={**EVERY, "limit": 5})
    slots = [start + k * MIN for k in range(5)]
    dues = [slot + offset_ms(f"{job_id}:{slot}", JITTER) for slot in slots]
    assert due_index(store) == {f"j:{job_id}": dues[0]}
    assert int(job_state(store, job_id)["anchor_ms"]) == start  # the phase stays on the slots
    # upcoming() shows the jittered times, from either client, before anything ran.
    shown = [round(t.timestamp() * 1000) for t in ductape.job.upcoming(job_id, 10)]

    async def upcoming_async() -> list[int]:
        async with AsyncDuctape(settings=settings) as aclient:
            return [round(t.timestamp() * 1000) for t in await aclient.job.upcoming(job_id, 10)]

    assert shown == asyncio.run(upcoming_async()) == dues
    assert ductape.job.get(job_id).spec.rule["jitter_ms"] == JITTER  # type: ignore[index]

    leader, queues = engine_for(store, settings, celery_app, "beat-a")
    standby, _ = engine_for(store, settings, celery_app, "beat-b")
    for k, due in enumerate(dues):
        engine = leader if k < 2 else standby  # the leader steps down after two runs
        if k == 2:
            leader.step_down()
        assert engine.tick(due - 1).released == 0  # past the slot, not yet due: nothing goes
        report = engine.tick(due)
        assert (report.released, report.lateness_ms) == (1, [0])
        assert queues.nominal(job_id) == slots[: k + 1]  # the run id is the slot's
    assert queues.run_ids == [f"{job_id}:{slot}" for slot in slots]
    runs = {r.run_id: r.nominal_ms for r in ductape.job.runs(job_id, 10)}
    assert runs == {f"{job_id}:{slot}": slot for slot in slots}
    state = job_state(store, job_id)
    assert (state["status"], state["runs_done"]) == ("completed", "5")


def test_lateness_is_measured_from_the_jittered_time(store: Store, settings: Settings, celery_app: Celery):
    start = T0 + MIN
    job_id = schedule(store, settings, T0, start_at=start, repeat=EVERY)
    spread = spread_of(store, job_id, **EVERY)
    slot = [start + k * MIN for k in range(6)]
    due = [spread.due_ms(s) for s in slot]
    assert due[1] > slot[1] + 1 and due[3] > slot[3] + 1  # the case needs a real offset (pinned by the hash)
    engine, queues = engine_for(store, settings, celery_app)

    # Beat wakes past slot 1 but before its run is due: slot 0 goes late, slot 1 is not missed.
    report = engine.tick(slot[1] + 1)
    assert report.released == 1 and report.lateness_ms == [slot[1] + 1 - due[0]]
    assert int(job_state(store, job_id)["next_run_ms"]) == due[1]
    assert engine.tick(due[1]).released == 1
    # Beat wakes after slot 3's run was due: slot 2 goes late, slot 3 is skipped ('skip').
    report = engine.tick(due[3] + 1)
    assert report.released == 1
    assert int(job_state(store, job_id)["next_run_ms"]) == due[4]
    assert engine.tick(due[4]).released == 1
    assert queues.nominal(job_id) == [slot[0], slot[1], slot[2], slot[4]]


@pytest.mark.parametrize(
    "repeat",
    [{"every": MIN, "jitter_ms": MIN}, {"cron": "*/5 * * * *", "jitter_ms": 5 * MIN}, {"jitter_ms": 10}],
)
def test_bad_jitter_is_refused_by_both_clients_and_nothing_is_written(
    settings: Settings, ductape: Ductape, r, prefix: str, repeat: dict[str, object]
):
    request = {"env": "dev", "product_tag": "tests", "event": "echo", "repeat": repeat}
    with pytest.raises(JobValidationError, match=r"jitter_ms|exactly one of"):
        ductape.job.schedule(request)

    async def schedule_async() -> None:
        async with AsyncDuctape(settings=settings) as aclient:
            await aclient.job.schedule(request)

    with pytest.raises(JobValidationError, match=r"jitter_ms|exactly one of"):
        asyncio.run(schedule_async())
    assert r.keys(f"{prefix}:*") == []


def test_a_job_shows_its_jitter_and_its_next_run_is_the_jittered_time(ductape: Ductape):
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", start_at="2099-01-01T00:00:00Z", repeat=EVERY
    )
    job = ductape.job.get(handle.job_id)
    slot = 4_070_908_800_000  # 2099-01-01T00:00:00Z
    assert job.status == JobStatus.SCHEDULED
    assert job.next_run_ms == slot + offset_ms(f"{handle.job_id}:{slot}", JITTER)
    assert handle.scheduled_at == job.next_run_at
    assert job.spec.rule is not None and job.spec.rule["jitter_ms"] == JITTER
