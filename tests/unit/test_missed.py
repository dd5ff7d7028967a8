"""Unit tests for timing.missed_slots: how many slots the misfire policy jumped over (a metric)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ductape_jobs.timing import MISSED_EXACT_STEPS, Rule, missed_slots, next_run_ms, occurrence_after_ms

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def ms(iso: str) -> int:
    """Epoch ms of an ISO-8601 UTC instant, computed without the module under test."""
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


T0 = ms("2027-03-01T12:00:00+00:00")


def missed(rule: Rule, anchor_ms: int, released_ms: int, runs_done: int, now_ms: int) -> int:
    """What the engine computes: next_run_ms first, then the slots it jumped over."""
    next_ms = next_run_ms(rule, anchor_ms, released_ms, runs_done, now_ms)
    return missed_slots(rule, anchor_ms, released_ms, runs_done, next_ms, now_ms)


def brute_force(rule: Rule, anchor_ms: int, released_ms: int, runs_done: int, now_ms: int) -> int:
    """Walk the slots one by one from released_ms to the kept next run (or to now / end)."""
    if rule.limit is not None and runs_done >= rule.limit:
        return 0
    next_ms = next_run_ms(rule, anchor_ms, released_ms, runs_done, now_ms)
    count, at_ms = 0, occurrence_after_ms(rule, anchor_ms, released_ms)
    while at_ms is not None and at_ms < now_ms and (next_ms is None or at_ms < next_ms):
        if rule.end_ms is not None and at_ms > rule.end_ms:
            break
        count, at_ms = count + 1, occurrence_after_ms(rule, anchor_ms, at_ms)
    return count


EVERY_MINUTE = Rule(every_ms=MINUTE_MS)


@pytest.mark.parametrize(
    ("rule", "released_ms", "runs_done", "now_ms", "expected"),
    [
        pytest.param(EVERY_MINUTE, T0, 1, T0 + 5, 0, id="every: released on time"),
        pytest.param(EVERY_MINUTE, T0, 1, T0 + 59_999, 0, id="every: late, but before the next slot"),
        pytest.param(EVERY_MINUTE, T0, 1, T0 + MINUTE_MS, 0, id="every: the next slot is now, so it runs"),
        pytest.param(EVERY_MINUTE, T0, 1, T0 + MINUTE_MS + 1, 1, id="every: one slot passed"),
        pytest.param(EVERY_MINUTE, T0, 1, T0 + 630_000, 10, id="every: down 10.5 minutes"),
        pytest.param(
            Rule(every_ms=MINUTE_MS, misfire="run_all", catchup_ms=150_000),
            T0,
            1,
            T0 + 630_000,
            7,
            id="run_all keeps the slots inside its window",
        ),
        pytest.param(
            Rule(every_ms=MINUTE_MS, misfire="run_all", catchup_ms=DAY_MS),
            T0,
            1,
            T0 + 630_000,
            0,
            id="run_all with a wide window skips nothing",
        ),
        pytest.param(Rule(every_ms=MINUTE_MS, limit=3), T0, 3, T0 + 630_000, 0, id="limit reached: none"),
        pytest.param(Rule(every_ms=MINUTE_MS, limit=3), T0, 2, T0 + 630_000, 10, id="limit not reached"),
        pytest.param(
            Rule(every_ms=MINUTE_MS, end_ms=T0 + 300_000),
            T0,
            1,
            T0 + 630_000,
            5,
            id="slots after endDate are not missed",
        ),
        pytest.param(
            Rule(every_ms=MINUTE_MS, end_ms=T0 + 300_000),
            T0,
            1,
            T0 + 150_000,
            2,
            id="ended later: skipped up to now only",
        ),
        pytest.param(Rule(cron="0 * * * *"), T0, 1, T0 + 999, 0, id="cron: under a second late"),
        pytest.param(Rule(cron="0 * * * *"), T0, 1, T0 + 30 * MINUTE_MS, 0, id="cron: late, before next"),
        pytest.param(Rule(cron="0 * * * *"), T0, 1, T0 + 5 * HOUR_MS + 30 * MINUTE_MS, 5, id="cron: 5 hours"),
        pytest.param(
            Rule(cron="0 * * * *", tz="America/New_York"),
            ms("2027-11-07T04:00:00+00:00"),
            1,
            ms("2027-11-07T08:30:00+00:00"),
            4,  # 05:00Z, 06:00Z (01:00 twice), 07:00Z, 08:00Z
            id="cron: hourly through the fall-back fold counts both passes",
        ),
        pytest.param(
            Rule(cron="30 1 * * *", tz="America/New_York"),
            ms("2027-11-05T05:30:00+00:00"),
            1,
            ms("2027-11-08T12:00:00+00:00"),
            3,  # the 6th, the 7th (once, at 05:30Z), the 8th
            id="cron: a fixed hour runs once in the fold",
        ),
        pytest.param(
            Rule(cron="30 2 * * *", tz="America/New_York"),
            ms("2027-03-13T07:30:00+00:00"),
            1,
            ms("2027-03-15T12:00:00+00:00"),
            2,  # the 14th moved to 07:00Z by the gap, the 15th
            id="cron: a slot in the spring-forward gap still counts",
        ),
    ],
)
def test_missed_slots(rule: Rule, released_ms: int, runs_done: int, now_ms: int, expected: int) -> None:
    assert missed(rule, T0, released_ms, runs_done, now_ms) == expected
    assert brute_force(rule, T0, released_ms, runs_done, now_ms) == expected


def test_a_long_cron_outage_is_counted_without_walking_every_slot() -> None:
    # A day of a per-second cron: 86,400 slots, far more than are walked one by one.
    rule = Rule(cron="* * * * * *")
    now_ms = T0 + DAY_MS + 500
    assert DAY_MS // SECOND_MS > 100 * MISSED_EXACT_STEPS
    assert missed(rule, T0, T0, 1, now_ms) == DAY_MS // SECOND_MS


def test_a_long_every_outage_is_exact() -> None:
    rule = Rule(every_ms=7_000)
    anchor_ms = T0 - 3_000  # off the second, so the phase matters
    released_ms = anchor_ms + 7_000 * 4
    now_ms = released_ms + 30 * DAY_MS
    expected = brute_force(rule, anchor_ms, released_ms, 5, now_ms)
    assert missed(rule, anchor_ms, released_ms, 5, now_ms) == expected == (30 * DAY_MS - 1) // 7_000


@settings(max_examples=300, deadline=None)
@given(
    every_ms=st.integers(1_000, 10 * MINUTE_MS),
    slots_late=st.integers(0, 40),
    extra_ms=st.integers(0, 10 * MINUTE_MS),
    catchup_ms=st.one_of(st.none(), st.integers(0, HOUR_MS)),
    end_after_ms=st.one_of(st.none(), st.integers(0, 2 * HOUR_MS)),
    limit_left=st.one_of(st.none(), st.integers(0, 5)),
)
def test_every_matches_a_slot_by_slot_walk(
    every_ms: int,
    slots_late: int,
    extra_ms: int,
    catchup_ms: int | None,
    end_after_ms: int | None,
    limit_left: int | None,
) -> None:
    runs_done = 3
    rule = Rule(
        every_ms=every_ms,
        misfire="skip" if catchup_ms is None else "run_all",
        catchup_ms=catchup_ms or 0,
        end_ms=None if end_after_ms is None else T0 + end_after_ms,
        limit=None if limit_left is None else runs_done + limit_left,
    )
    released_ms = T0 + every_ms * 2
    now_ms = released_ms + every_ms * slots_late + extra_ms
    assert missed(rule, T0, released_ms, runs_done, now_ms) == brute_force(
        rule, T0, released_ms, runs_done, now_ms
    )


@settings(max_examples=60, deadline=None)
@given(
    expr=st.sampled_from(["*/7 * * * * *", "*/5 * * * *", "0 */3 * * *", "15 1 * * *", "0 9 * * 1-5"]),
    tz=st.sampled_from(["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe"]),
    released_ms=st.integers(ms("2027-01-01T00:00:00+00:00"), ms("2027-12-31T00:00:00+00:00")),
    late_ms=st.integers(0, 3 * DAY_MS),
)
def test_cron_matches_a_slot_by_slot_walk(expr: str, tz: str, released_ms: int, late_ms: int) -> None:
    rule = Rule(cron=expr, tz=tz)
    # Released at a real slot, as beat does.
    slot_ms = occurrence_after_ms(rule, T0, released_ms)
    assert slot_ms is not None
    expected = brute_force(rule, T0, slot_ms, 1, slot_ms + late_ms)
    if expected < MISSED_EXACT_STEPS:
        assert missed(rule, T0, slot_ms, 1, slot_ms + late_ms) == expected
