"""Planning an update (updating.plan_update), pure: the clock and the job's state are arguments."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ductape_jobs.errors import JobStateError, JobValidationError
from ductape_jobs.jitter import Spread
from ductape_jobs.models import JobRecord, JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.records import Current
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import CeleryCall, JobSpec, JobStatus
from ductape_jobs.updating import plan_update

T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z
MIN = 60_000
HOUR = 3_600_000
SETTINGS = Settings(require_handler=False)
NO_SESSIONS = Sessions({})
JOB = {"env": "dev", "product_tag": "tests", "event": "echo"}


def current(
    fields: dict[str, Any],
    *,
    status: JobStatus = JobStatus.SCHEDULED,
    next_ms: int | None = None,
    runs_done: int = 0,
    anchor_ms: int = T0,
    last_slot_ms: int | None = None,
) -> Current:
    spec = plan_job(JobRequest.parse({**JOB, **fields}), SETTINGS, NO_SESSIONS, T0, "j1").spec
    job = JobRecord(
        job_id="j1",
        spec=spec,
        status=status,
        recurring=spec.rule is not None,
        next_run_ms=next_ms,
        runs_done=runs_done,
        created_ms=T0,
        updated_ms=T0,
    )
    return Current(job, anchor_ms, 0, last_slot_ms)


def asked(req: JobRequest, now_ms: int) -> JobSpec:
    """The spec a request asks for, as the client plans it before an update."""
    return plan_job(req, SETTINGS, NO_SESSIONS, now_ms, "j1").spec


def update(cur: Current, now_ms: int, **fields: Any) -> tuple[int | None, int]:
    req = JobRequest.parse({**JOB, **fields})
    planned = plan_update(cur, asked(req, now_ms), now_ms)
    assert planned.spec.created_ms == T0  # the job's creation time stays
    return planned.next_run_ms, planned.anchor_ms


EVERY = {"start_at": T0, "repeat": {"every": MIN}}


@pytest.mark.parametrize(
    ("state", "now", "fields", "expected"),
    [
        # rule and start unchanged: the schedule stays, whatever else changes
        (
            {"next_ms": T0 + 3 * MIN, "runs_done": 3, "last_slot_ms": T0 + 2 * MIN},
            T0 + 150_000,
            {**EVERY, "retries": 4, "input": {"a": 1}},
            (T0 + 3 * MIN, T0),
        ),
        # a new interval goes on from the last released slot, on its phase
        (
            {"next_ms": T0 + 3 * MIN, "runs_done": 3, "last_slot_ms": T0 + 2 * MIN},
            T0 + 150_000,
            {"start_at": T0, "repeat": {"every": 5 * MIN}},
            (T0 + 7 * MIN, T0 + 2 * MIN),
        ),
        # slots of the new rule that fell while nobody ran them are skipped (misfire skip)
        (
            {"next_ms": T0 + 3 * MIN, "runs_done": 3, "last_slot_ms": T0 + 2 * MIN},
            T0 + 20 * MIN + 1,
            {"start_at": T0, "repeat": {"every": 5 * MIN}},
            (T0 + 22 * MIN, T0 + 2 * MIN),
        ),
        # a cron's next slot after the last released one, never that slot again
        (
            {"next_ms": T0 + MIN, "runs_done": 1, "last_slot_ms": T0},
            T0,
            {"start_at": T0, "repeat": {"cron": "0 * * * *"}},
            (T0 + HOUR, T0),
        ),
        # never run yet: planned as a new schedule from start_at
        (
            {"next_ms": T0 + HOUR},
            T0,
            {"start_at": T0 + 2 * HOUR, "repeat": {"every": MIN}},
            (T0 + 2 * HOUR, T0 + 2 * HOUR),
        ),
        # start_at moved beyond the last released slot: from start_at
        (
            {"next_ms": T0 + MIN, "runs_done": 1, "last_slot_ms": T0},
            T0 + 1,
            {"start_at": T0 + HOUR, "repeat": {"every": MIN}},
            (T0 + HOUR, T0 + HOUR),
        ),
        # the new limit already reached: nothing left (UPDATE_JOB completes it)
        (
            {"next_ms": T0 + 2 * MIN, "runs_done": 2, "last_slot_ms": T0 + MIN},
            T0 + MIN + 1,
            {"start_at": T0, "repeat": {"every": MIN, "limit": 2}},
            (None, T0 + MIN),
        ),
        (
            {"next_ms": T0 + HOUR},
            T0,
            {"start_at": T0 + HOUR, "repeat": {"every": MIN, "limit": 1}},
            (T0 + HOUR, T0 + HOUR),
        ),
    ],
)
def test_the_next_run_of_an_updated_schedule(
    state: dict[str, Any], now: int, fields: dict[str, Any], expected: tuple[int | None, int]
):
    assert update(current(EVERY, **state), now, **fields) == expected


def test_a_jittered_rule_puts_the_next_run_at_its_slots_due_time_and_keeps_the_anchor_on_slots():
    cur = current(EVERY, next_ms=T0 + 3 * MIN, runs_done=3, last_slot_ms=T0 + 2 * MIN)
    rule = {"every": 5 * MIN, "jitter_ms": MIN}
    next_ms, anchor = update(cur, T0 + 150_000, start_at=T0, repeat=rule)
    slot = T0 + 7 * MIN
    spread = Spread(JobRequest.parse({**JOB, "repeat": rule}).repeat.to_rule(), "j1", T0 + 2 * MIN)  # type: ignore[union-attr]
    assert (next_ms, anchor) == (spread.due_ms(slot), T0 + 2 * MIN)
    assert slot <= next_ms < slot + MIN


def test_a_one_off_moves_to_its_new_start_and_keeps_it_when_unchanged():
    cur = current({"start_at": T0 + HOUR}, next_ms=T0 + HOUR, anchor_ms=T0 + HOUR)
    assert update(cur, T0, start_at=T0 + 2 * HOUR) == (T0 + 2 * HOUR, T0 + 2 * HOUR)
    assert update(cur, T0, start_at=T0 + HOUR, retries=3) == (T0 + HOUR, T0 + HOUR)
    assert update(cur, T0 + 5, start_at=0) == (T0 + 5, T0 + 5)  # now


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({**JOB, "event": "other", **EVERY}, "event"),
        ({**JOB, "env": "prd", **EVERY}, "env"),
        ({**JOB, "product_tag": "x", **EVERY}, "product_tag"),
        ({**JOB}, "repeat"),  # a schedule cannot become a one-off
    ],
)
def test_what_names_the_job_cannot_change(fields: dict[str, Any], field: str):
    with pytest.raises(JobValidationError) as caught:
        plan_update(current(EVERY), asked(JobRequest.parse(fields), T0), T0)
    assert caught.value.field == field and "cancel" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "status", "runs_done"),
    [
        (EVERY, JobStatus.COMPLETED, 3),
        (EVERY, JobStatus.CANCELLED, 0),
        ({}, JobStatus.QUEUED, 1),  # its run was handed over
        ({}, JobStatus.RUNNING, 1),
        ({}, JobStatus.SCHEDULED, 1),  # its retry waits in the due index
    ],
)
def test_only_a_job_waiting_for_its_next_run_can_change(
    fields: dict[str, Any], status: JobStatus, runs_done: int
):
    cur = current(fields, status=status, runs_done=runs_done)
    with pytest.raises(JobStateError, match="cannot update job j1"):
        plan_update(cur, asked(JobRequest.parse({**JOB, **fields}), T0), T0)


def test_an_update_without_input_keeps_the_stored_input_fields():
    cur = current({**EVERY, "input": {"a": 1}})
    req = JobRequest.parse({**JOB, **EVERY, "input": {"ignored": True}, "retries": 2})
    planned = plan_update(cur, asked(req, T0), T0, input_given=False)
    assert (planned.spec.input, planned.spec.retries) == ({"a": 1}, 2)


def test_an_imported_beat_schedule_entry_is_changed_in_its_config_not_by_update():
    cur = current(EVERY)
    imported = cur.job.model_copy(
        update={"spec": dataclasses.replace(cur.job.spec, celery=CeleryCall(entry="nightly", task="app.t"))}
    )
    with pytest.raises(JobStateError, match="imported beat_schedule entry 'nightly'"):
        plan_update(Current(imported, T0, 0, None), asked(JobRequest.parse({**JOB, **EVERY}), T0), T0)
