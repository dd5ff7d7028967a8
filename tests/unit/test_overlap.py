"""repeat.overlap and backfill: the pure parts (the rule's field and its defaults, the slots of a
past range, the range checks), with time as an argument."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from ductape_jobs import jobfields, timing
from ductape_jobs.brief import JobBrief
from ductape_jobs.errors import JobValidationError
from ductape_jobs.flows import _check_range
from ductape_jobs.models import JobRecord, JobRequest, Repeat
from ductape_jobs.terms import JobSpec, JobStatus

T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z
MIN = 60_000
HOUR = 3_600_000


def test_new_schedules_skip_by_default_and_a_rule_stored_without_the_field_allows() -> None:
    assert Repeat(every=MIN).to_rule().overlap == "skip"
    assert Repeat(every=MIN, overlap="buffer_one").to_rule().overlap == "buffer_one"
    assert timing.Rule(every_ms=MIN).overlap == "allow"  # what a stored rule without it reads as
    old = {"env": "dev", "product_tag": "tests", "event": "echo", "rule": {"every_ms": MIN, "tz": "UTC"}}
    stored = (
        jobfields.LEGACY_BRIEF
        + jobfields.SEP
        + json.dumps(dataclasses.asdict(JobBrief(**old)), separators=(",", ":"))
    )
    assert jobfields.read_brief(stored).timing_rule().overlap == "allow"  # type: ignore[union-attr]
    packed = jobfields.SEP.join(["env", "dev", "tag", "tests", "ev", "echo", "every", str(MIN)])
    assert jobfields.read_brief(packed).timing_rule().overlap == "allow"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["Skip", "buffer", "", None, 1, ["skip"]])
def test_an_unknown_policy_is_refused_by_name(value: Any) -> None:
    with pytest.raises(JobValidationError) as caught:
        JobRequest.parse(
            {"env": "dev", "product_tag": "t", "event": "e", "repeat": {"every": MIN, "overlap": value}}
        )
    assert caught.value.field == "repeat.overlap"


@pytest.mark.parametrize(
    ("rule", "anchor", "start", "end", "slots"),
    [
        # every: on the anchor's phase, before it too (a start_at in the past)
        (
            timing.Rule(every_ms=MIN),
            T0 + 10 * MIN,
            T0,
            T0 + 3 * MIN,
            [T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN],
        ),
        (timing.Rule(every_ms=MIN), T0 + 30_000, T0, T0 + 2 * MIN, [T0 + 30_000, T0 + 90_000]),
        (timing.Rule(every_ms=MIN), T0, T0 + 1, T0 + MIN - 1, []),
        (timing.Rule(every_ms=MIN), T0, T0 + MIN, T0 + MIN, [T0 + MIN]),  # both ends inclusive
        # cron: its own times, in its zone; the anchor plays no part
        (timing.Rule(cron="0 * * * *"), T0 + 5 * HOUR, T0, T0 + 2 * HOUR, [T0, T0 + HOUR, T0 + 2 * HOUR]),
        (
            timing.Rule(cron="30 9 * * *", tz="America/New_York"),
            T0,
            T0,
            T0 + 2 * 86_400_000,
            [T0 + 14 * HOUR + 30 * MIN, T0 + 38 * HOUR + 30 * MIN],  # 09:30 EST is 14:30Z
        ),
    ],
)
def test_the_slots_of_a_range(rule: timing.Rule, anchor: int, start: int, end: int, slots: list[int]) -> None:
    assert timing.slots_between_ms(rule, anchor, start, end, 100) == slots


def test_more_slots_than_asked_for_is_none_not_a_cut_list() -> None:
    rule = timing.Rule(every_ms=MIN)
    assert timing.slots_between_ms(rule, T0, T0, T0 + 9 * MIN, 10) is not None
    assert timing.slots_between_ms(rule, T0, T0, T0 + 10 * MIN, 10) is None


def job(
    status: JobStatus = JobStatus.SCHEDULED, start_ms: int = 0, next_ms: int | None = T0 + HOUR, **rule: Any
):
    spec = JobSpec(
        env="dev",
        product_tag="t",
        event="e",
        retries=0,
        input={},
        start_ms=start_ms,
        rule={"every_ms": MIN, **rule},
        created_ms=T0,
    )
    record = JobRecord(
        job_id="j",
        spec=spec,
        status=status,
        recurring=True,
        next_run_ms=next_ms,
        created_ms=T0,
        updated_ms=T0,
    )
    return record, timing.Rule(**spec.rule)  # type: ignore[arg-type]


NOW = T0 + 2 * HOUR


@pytest.mark.parametrize(
    ("made", "start", "end", "field", "words"),
    [
        (job(), T0 + MIN, T0, "start", "after end"),
        (job(), T0 - MIN, T0 + MIN, "start", "before the job's start"),  # began when created
        (job(start_ms=T0 - HOUR), T0 - 2 * HOUR, T0, "start", "before the job's start"),
        (job(end_ms=T0 + 30 * MIN), T0, T0 + 31 * MIN, "end", "endDate"),
        (job(next_ms=None), T0, NOW + 1, "end", "not past yet"),
        (job(), T0, T0 + HOUR, "end", "reaches the schedule's next run"),
    ],
)
def test_a_range_is_refused_by_field(made: Any, start: int, end: int, field: str, words: str) -> None:
    record, rule = made
    with pytest.raises(JobValidationError, match=words) as caught:
        _check_range(record, rule, start, end, NOW, record.next_run_ms)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("made", "start", "end"),
    [
        (job(), T0, T0 + HOUR - 1),  # up to just before the next run
        (job(start_ms=T0 - HOUR), T0 - HOUR, T0),  # from an earlier start_at
        (job(JobStatus.PAUSED, next_ms=T0 + MIN), T0, NOW),  # paused: resuming skips those slots
        (job(JobStatus.COMPLETED, next_ms=None), T0, NOW),
    ],
)
def test_a_range_inside_the_job_and_the_past_is_taken(made: Any, start: int, end: int) -> None:
    record, rule = made
    _check_range(record, rule, start, end, NOW, record.next_run_ms)
