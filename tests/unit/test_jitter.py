"""Jitter (repeat.jitter_ms): the offset table-driven, its bounds, endDate, DST, and the misfire rule.

Pure: no Redis, no clock; every instant is chosen.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from ductape_jobs import timing
from ductape_jobs.errors import JobValidationError
from ductape_jobs.jitter import Spread, offset_ms
from ductape_jobs.models import JobRequest, Repeat
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobStatus

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z
SETTINGS = Settings()


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def rule(**fields: Any) -> timing.Rule:
    return Repeat.model_validate(fields).to_rule()


def plan(now_ms: int = T0, job_id: str = "job1", **fields: Any):
    req = JobRequest.parse({"env": "dev", "product_tag": "billing", "event": "tick", **fields})
    return plan_job(req, SETTINGS, Sessions({}), now_ms, job_id)


# -- the offset --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_id", "window_ms", "expected"),
    [
        # Pinned: blake2b of the run id, the same in every process (Python's hash() is salted per
        # process, so these would differ between the beat and a standby).
        ("job-a:1893456000000", 30_000, 14_524),
        ("job-a:1893456060000", 30_000, 12_941),
        ("job-b:1893456000000", 1_000, 30),
        ("job-a:1893456000000", 1, 0),  # a window of one millisecond (or none) has one offset
        ("job-a:1893456000000", 0, 0),
    ],
)
def test_offset_is_a_stable_hash_of_the_run_id(run_id: str, window_ms: int, expected: int):
    assert offset_ms(run_id, window_ms) == expected
    assert offset_ms(run_id, window_ms) == expected  # and the same on every call


@pytest.mark.parametrize("window_ms", [2, 7, 1_000, 59_999, 2**63 - 1])
def test_offset_stays_within_zero_to_the_window(window_ms: int):
    offsets = [offset_ms(f"job:{T0 + k * MINUTE}", window_ms) for k in range(2_000)]
    assert all(0 <= o < window_ms for o in offsets)
    if window_ms <= 7:  # small windows: every value is reached, so the spread is real
        assert set(offsets) == set(range(window_ms))


def test_different_jobs_on_the_same_slot_get_different_offsets():
    offsets = {offset_ms(f"job{n}:{T0}", MINUTE) for n in range(50)}
    assert len(offsets) > 45  # the point of jitter: many schedules on one slot spread out


# -- due times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"every": MINUTE, "jitter_ms": 59_999},
        {"every": MINUTE, "jitter_ms": 2},
        {"every": 10 * SECOND, "jitter_ms": 5 * SECOND},
        {"cron": "*/5 * * * *", "jitter_ms": 4 * MINUTE},
        {"cron": "0 9 * * *", "tz": "America/New_York", "jitter_ms": HOUR},
    ],
)
def test_due_times_keep_their_slot_order_and_map_back_to_their_slot(fields: dict[str, Any]):
    r = rule(**fields)
    spread = Spread(r, "job1", T0)
    slots = timing.upcoming_ms(r, T0, T0 if r.every_ms else timing.first_run_ms(r, T0, T0), 0, 200)
    dues = [spread.due_ms(s) for s in slots]
    for slot, due in zip(slots, dues, strict=True):
        assert 0 <= due - slot < r.jitter_ms
        assert due - slot == offset_ms(f"job1:{slot}", r.jitter_ms)
        assert spread.slot_ms(due) == slot
    assert dues == sorted(set(dues))  # strictly increasing: runs keep their order
    assert len({d - s for s, d in zip(slots, dues, strict=True)}) > 1  # and are spread


def test_no_jitter_is_todays_schedule_exactly():
    r = rule(every=MINUTE)
    spread = Spread(r, "job1", T0)
    assert [spread.due_ms(T0 + k * MINUTE) for k in range(5)] == [T0 + k * MINUTE for k in range(5)]
    assert spread.slot_ms(T0 + 17) == T0 + 17
    with_zero = plan(repeat={"every": MINUTE, "jitter_ms": 0}, start_at=T0 + HOUR)
    without = plan(repeat={"every": MINUTE}, start_at=T0 + HOUR)
    # The stored rule and the dedupe fingerprint are what they were before jitter existed.
    assert with_zero.spec.rule == without.spec.rule and "jitter_ms" not in (without.spec.rule or {})
    assert with_zero.spec.fingerprint() == without.spec.fingerprint()
    assert (with_zero.next_run_ms, with_zero.anchor_ms) == (T0 + HOUR, T0 + HOUR)


def test_a_time_written_without_jitter_is_its_own_slot():
    spread = Spread(rule(every=MINUTE, jitter_ms=30 * SECOND), "job1", T0)
    off = spread.due_ms(T0 + MINUTE) - (T0 + MINUTE)
    assert off > 0
    assert spread.slot_ms(T0 + MINUTE) == T0 + MINUTE  # no slot maps there: kept as is


# -- endDate: clamped, never dropped -------------------------------------------------------------


def test_a_jittered_run_never_falls_past_end_date_and_none_is_dropped():
    # The last slot is 1 s before the end, with up to 59 s of jitter: its run is due at the end.
    end = T0 + 4 * MINUTE + 1_000
    jittered = rule(every=MINUTE, jitter_ms=59 * SECOND, endDate=end)
    plain = dataclasses.replace(jittered, jitter_ms=0)
    spread = Spread(jittered, "job-a", T0)
    slots = timing.upcoming_ms(jittered, T0, T0, 0, 100)
    assert slots == timing.upcoming_ms(plain, T0, T0, 0, 100)  # as many runs as without jitter
    dues = spread.upcoming_ms(spread.due_ms(T0), 0, 100)
    assert len(dues) == len(slots) == 5 and all(d <= end for d in dues)
    last = T0 + 4 * MINUTE
    assert offset_ms(f"job-a:{last}", 59 * SECOND) > 1_000  # the unclamped time would pass the end
    assert dues[-1] == end and spread.slot_ms(end) == last


def test_an_end_date_run_released_then_the_schedule_ends():
    end = T0 + 2 * MINUTE
    spread = Spread(rule(every=MINUTE, jitter_ms=30 * SECOND, endDate=end), "job1", T0)
    assert spread.next_run(T0 + 2 * MINUTE, 3, end) is None
    assert spread.next_run(T0 + MINUTE, 2, T0 + MINUTE + 30 * SECOND) == (end, spread.due_ms(end))
    assert spread.due_ms(end) == end  # the slot at the end itself cannot move past it


# -- DST: the offset is elapsed time, never wall time ----------------------------------------------


@pytest.mark.parametrize(
    ("slot", "note"),
    [
        (ms("2030-03-09T14:00:00"), "the day before spring forward (EST)"),
        (ms("2030-03-10T13:00:00"), "9:00 EDT, just after it"),
        (ms("2030-11-03T14:00:00"), "9:00 EST, just after fall back"),
    ],
)
def test_the_offset_does_not_depend_on_the_zone_or_clock_changes(slot: int, note: str):
    zoned = rule(cron="0 9 * * *", tz="America/New_York", jitter_ms=HOUR)
    in_utc = rule(every=DAY, jitter_ms=HOUR)
    for r in (zoned, in_utc):
        assert Spread(r, "job1", ms("2030-01-01T14:00:00")).due_ms(slot) - slot == offset_ms(
            f"job1:{slot}", HOUR
        ), note


def test_a_clock_change_bringing_two_slots_close_keeps_them_in_order():
    # '30,59 1,2' runs at least 29 min apart on the wall, but on 2030-03-10 (New York springs
    # forward at 2:00) 2:30 moves to 3:00 EDT, one minute after 1:59 EST: the 1:59 run must fall
    # due inside that minute, or it would come after the next one.
    r = rule(cron="30,59 1,2 * * *", tz="America/New_York", jitter_ms=28 * MINUTE)
    before = ms("2030-03-10T06:59:00")  # 1:59 EST
    after = timing.occurrence_after_ms(r, T0, before)
    assert after == before + MINUTE
    for job in ("job1", "job2", "job3", "job4", "job5"):
        spread = Spread(r, job, T0)
        assert before <= spread.due_ms(before) < after <= spread.due_ms(after)
        assert spread.slot_ms(spread.due_ms(before)) == before
        assert spread.slot_ms(spread.due_ms(after)) == after


# -- lateness is measured from the jittered due time ------------------------------------------------


def test_a_slot_whose_jittered_time_is_still_ahead_is_not_missed():
    r = rule(every=MINUTE, jitter_ms=50 * SECOND)
    spread = Spread(r, "job-a", T0)
    nxt = T0 + MINUTE
    due = spread.due_ms(nxt)
    assert due - nxt > 1_000
    # Past the slot but before its due time: not late, kept.
    assert spread.next_run(T0, 1, nxt + 1) == (nxt, due)
    # Past its due time: with 'skip' it is missed, and the next slot whose run is still ahead is kept.
    later = nxt + MINUTE
    assert spread.next_run(T0, 1, due + 1) == (later, spread.due_ms(later))
    # Slot 'later' passed too, but its run is still ahead: kept, not skipped to the one after.
    assert spread.due_ms(later) > later + 1
    assert spread.next_run(T0, 1, later + 1) == (later, spread.due_ms(later))
    # 'run_all' keeps it within its window.
    catch_up = Spread(dataclasses.replace(r, misfire="run_all", catchup_ms=MINUTE), "job-a", T0)
    assert catch_up.next_run(T0, 1, due + 1) == (nxt, due)


def test_resuming_skips_runs_whose_due_time_passed_while_paused():
    r = rule(every=MINUTE, jitter_ms=50 * SECOND)
    spread = Spread(r, "job-a", T0)
    slot = T0 + 3 * MINUTE
    due = spread.due_ms(slot)
    assert spread.first_due_from(slot + 1) == due  # slot passed, its run is still ahead
    assert spread.first_due_from(due + 1) == spread.due_ms(slot + MINUTE)


# -- planning and bad input -----------------------------------------------------------------------


def test_the_first_run_is_due_at_its_jittered_time_and_anchored_on_its_slot():
    got = plan(now_ms=T0, job_id="job-a", repeat={"every": MINUTE, "jitter_ms": 30_000})
    assert got.status == JobStatus.SCHEDULED and got.run_id is None  # not released at once
    assert got.anchor_ms == T0
    assert got.next_run_ms == got.due_ms == T0 + offset_ms(f"job-a:{T0}", 30_000)
    assert got.spec.rule is not None and got.spec.rule["jitter_ms"] == 30_000


@pytest.mark.parametrize(
    ("repeat", "field", "words"),
    [
        ({"every": MINUTE, "jitter_ms": MINUTE}, "repeat.jitter_ms", "not below the interval"),
        ({"every": MINUTE, "jitter_ms": 10 * MINUTE}, "repeat.jitter_ms", "give a smaller jitter_ms"),
        ({"cron": "*/5 * * * *", "jitter_ms": 5 * MINUTE}, "repeat.jitter_ms", "(300000 ms)"),
        ({"cron": "0 9,10 * * *", "jitter_ms": 2 * HOUR}, "repeat.jitter_ms", "shortest gap"),
        ({"every": MINUTE, "jitter_ms": -1}, "repeat.jitter_ms", "greater than or equal to 0"),
        ({"every": MINUTE, "jitter_ms": "500"}, "repeat.jitter_ms", "valid integer"),
        ({"every": MINUTE, "jitter_ms": 1.5}, "repeat.jitter_ms", "valid integer"),
        ({"every": MINUTE, "jitter_ms": True}, "repeat.jitter_ms", "valid integer"),
        ({"every": MINUTE, "jitter_ms": 2**63}, "repeat.jitter_ms", "less than or equal"),
        ({"jitter_ms": 500}, "repeat", "exactly one of 'cron' or 'every'"),
        ({"every": MINUTE, "jitterMs": 500}, "repeat.jitterMs", "did you mean 'jitter_ms'"),
    ],
)
def test_bad_jitter_is_refused_with_a_clear_error(repeat: dict[str, Any], field: str, words: str):
    with pytest.raises(JobValidationError) as caught:
        plan(repeat=repeat)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_stored_rule_with_jitter_past_its_period_is_refused_when_read_back():
    # A record not written through schedule() (edited, or from a bad build): beat sets it aside
    # with this reason rather than searching slot after slot for its due time.
    with pytest.raises(JobValidationError, match="not below the interval"):
        timing.Rule(every_ms=1_000, jitter_ms=10**12)
    with pytest.raises(JobValidationError, match="shortest gap"):
        timing.Rule(cron="*/5 * * * *", jitter_ms=5 * MINUTE)
    assert timing.Rule(every_ms=1_000, jitter_ms=999).jitter_ms == 999


@pytest.mark.parametrize("cron", ["30,59 1,2 * * *", "*/30 * * * *", "0 * * * *", "45 1 * * *"])
@pytest.mark.parametrize("around", ["2030-03-10T07:00:00", "2030-11-03T06:00:00"])  # NY, both ways
def test_zoned_crons_keep_order_and_map_back_through_clock_changes(cron: str, around: str):
    r = rule(cron=cron, tz="America/New_York", jitter_ms=timing.cron_min_gap_ms(cron) - 1)
    start = ms(around) - 2 * DAY
    first = timing.first_run_ms(r, start, start)
    assert first is not None
    slots = timing.upcoming_ms(r, first, first, 0, 1_000)
    slots = [s for s in slots if s <= ms(around) + 2 * DAY]
    for job in ("job1", "job2", "job3"):
        spread = Spread(r, job, first)
        dues = [spread.due_ms(s) for s in slots]
        assert dues == sorted(set(dues)), (cron, around, job)
        assert all(s <= d < nxt for s, d, nxt in zip(slots, dues, [*slots[1:], 2**62], strict=True))
        assert [spread.slot_ms(d) for d in dues] == slots
