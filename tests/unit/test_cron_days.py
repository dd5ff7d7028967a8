"""Unit tests for cron day fields: day-of-month and day-of-week combine by OR (Vixie), with #, L, W too."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ductape_jobs.errors import JobValidationError
from ductape_jobs.models import Repeat
from ductape_jobs.timing import Rule, cron_next_ms, missed_slots, next_run_ms, upcoming_ms, validate_cron

MINUTE = timedelta(minutes=1)


def ms(iso: str) -> int:
    """Epoch ms of an ISO-8601 UTC instant, computed without the module under test."""
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def iso(at_ms: int) -> str:
    """Readable UTC form of an epoch-ms instant, so failures show times, not numbers."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def series(expr: str, tz: str, after: str, count: int) -> list[str]:
    """The next `count` runs after an instant, as ISO strings."""
    found, at_ms = [], ms(after)
    for _ in range(count):
        next_ms = cron_next_ms(validate_cron(expr), tz, at_ms)
        assert next_ms is not None
        found.append(iso(next_ms))
        at_ms = next_ms
    return found


# Worked out on a calendar: 2026-12-01 is a Tuesday, 2027-01-01 a Friday, 2027-05-15 a Saturday,
# 2044-02-29 a Monday (the only fifth Monday of a February between 2016 and 2072).
ISSUE_CASES = [
    # The 15th of every month, and every first Monday.
    (
        "0 0 15 * MON#1",
        "2026-12-01T10:00:00Z",
        ["2026-12-07", "2026-12-15", "2027-01-04", "2027-01-15", "2027-02-01", "2027-02-15"],
    ),
    # The 1st of every month, and every second Friday.
    (
        "0 0 1 * FRI#2",
        "2026-12-01T10:00:00Z",
        ["2026-12-11", "2027-01-01", "2027-01-08", "2027-02-01", "2027-02-12", "2027-03-01"],
    ),
    # The last day of February every year (or a fifth Monday in February, which is Feb 29).
    ("0 0 L 2 MON#5", "2026-12-01T10:00:00Z", ["2027-02-28", "2028-02-29", "2029-02-28"]),
    ("0 0 L 2 MON#5", "2043-03-01T00:00:00Z", ["2044-02-29", "2045-02-28"]),
    # The weekday nearest the 15th, and every Monday.
    (
        "0 0 15W * MON",
        "2026-12-01T10:00:00Z",
        ["2026-12-07", "2026-12-14", "2026-12-15", "2026-12-21", "2026-12-28", "2027-01-04"],
    ),
    # May 15th 2027 is a Saturday: 15W is Friday the 14th.
    ("0 0 15W * MON", "2027-05-01T00:00:00Z", ["2027-05-03", "2027-05-10", "2027-05-14", "2027-05-17"]),
    # Last Friday (croniter writes it "L5") or the 1st.
    ("0 0 1 * L5", "2026-12-01T10:00:00Z", ["2026-12-25", "2027-01-01", "2027-01-29", "2027-02-01"]),
]


@pytest.mark.parametrize(("expr", "after", "days"), ISSUE_CASES)
def test_day_fields_combine_by_or(expr: str, after: str, days: list[str]) -> None:
    assert series(expr, "UTC", after, len(days)) == [f"{day}T00:00:00Z" for day in days]


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # Second Sunday of March 2026 (the 8th) at 02:30 falls in New York's spring-forward gap
        # and runs when it ends; the 9th is already on summer time; 2027's 9th is before the change.
        (
            "30 2 9 3 SUN#2",
            "2026-03-01T00:00:00Z",
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z", "2027-03-09T07:30:00Z", "2027-03-14T07:00:00Z"],
        ),
        # First Sunday of November 2026 (the 1st) repeats 01:00-02:00: a fixed hour runs once.
        (
            "30 1 2 11 SUN#1",
            "2026-10-31T00:00:00Z",
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2027-11-02T05:30:00Z", "2027-11-07T05:30:00Z"],
        ),
    ],
)
def test_both_halves_follow_the_dst_rules(expr: str, after: str, expected: list[str]) -> None:
    assert series(expr, "America/New_York", after, len(expected)) == expected


@pytest.mark.parametrize("expr", ["0 0 15 * MON#1", "0 0 1 * FRI#2", "0 0 L 2 MON#5", "0 0 15W * MON"])
def test_a_request_with_the_issues_crons_is_accepted(expr: str) -> None:
    rule = Repeat.model_validate({"cron": expr}).to_rule()
    assert rule.cron == expr
    assert cron_next_ms(expr, rule.tz, ms("2026-12-01T00:00:00Z")) is not None


def test_a_day_that_never_comes_is_still_refused() -> None:
    with pytest.raises(JobValidationError, match="never fires"):
        validate_cron("0 0 30 2 *")
    # Under OR an impossible day of month leaves the weekday half: Feb 29 of 2044, 2072, ...
    assert series("0 0 31 2 MON#5", "UTC", "2026-12-01T00:00:00Z", 2) == [
        "2044-02-29T00:00:00Z",
        "2072-02-29T00:00:00Z",
    ]


def test_upcoming_and_missed_slots_use_the_same_days() -> None:
    rule = Rule(cron="0 0 15 * MON#1")
    released = ms("2026-12-01T00:00:00Z")
    first = cron_next_ms("0 0 15 * MON#1", "UTC", released)
    assert first is not None
    upcoming = [iso(at) for at in upcoming_ms(rule, 0, first, 1, 4)]
    assert upcoming == [f"{d}T00:00:00Z" for d in ["2026-12-07", "2026-12-15", "2027-01-04", "2027-01-15"]]
    now = ms("2027-02-02T00:00:00Z")  # beat down since December: skip resumes at Feb 15
    next_ms = next_run_ms(rule, 0, released, 1, now)
    assert next_ms is not None and iso(next_ms) == "2027-02-15T00:00:00Z"
    # Dec 7, Dec 15, Jan 4, Jan 15, Feb 1 were jumped over.
    assert missed_slots(rule, 0, released, 1, next_ms, now) == 5


# --- against a brute-force walk ----------------------------------------------------------------

DOM = ["1", "15", "31", "1-7", "1,15", "*/10", "L", "15W", "1W", "30W"]
DOW = ["MON", "5", "1-5", "SUN,SAT", "MON#1", "FRI#2", "MON#5", "L5", "1#3,4#1"]
MONTH = ["*", "2", "1,6", "*/4"]
MINUTE_FIELD = ["0", "30", "*/20"]
HOUR = ["0", "12", "9-10"]
_DOW_NAMES = {"SUN": 0, "MON": 1, "SAT": 6, "FRI": 5}


def _values(field: str, low: int, high: int) -> set[int]:
    """The values a plain field (numbers, ranges, steps, lists) names."""
    found: set[int] = set()
    for part in field.split(","):
        part = str(_DOW_NAMES.get(part, part))
        base, _, step = part.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (int(v) for v in base.split("-"))
        else:
            first = last = int(base)
        found.update(range(first, last + 1, int(step or 1)))
    return found


def _nearest_weekday(day: date, wanted: int) -> bool:
    """Quartz's 'nW': the weekday nearest the wanted day, never leaving the month."""
    last = calendar.monthrange(day.year, day.month)[1]
    target = date(day.year, day.month, min(wanted, last))
    if target.weekday() == 5:  # Saturday: Friday, or Monday when that is the 1st
        target += timedelta(days=2 if target.day == 1 else -1)
    elif target.weekday() == 6:  # Sunday: Monday, or Friday when that is the last day
        target += timedelta(days=-2 if target.day == last else 1)
    return day == target


def _dom_matches(field: str, day: date) -> bool:
    last = calendar.monthrange(day.year, day.month)[1]
    if field == "L":
        return day.day == last
    if field.endswith("W"):
        return _nearest_weekday(day, int(field[:-1]))
    return day.day in _values(field, 1, 31)


def _dow_part_matches(part: str, day: date) -> bool:
    weekday = (day.weekday() + 1) % 7  # cron counts from Sunday = 0
    last = calendar.monthrange(day.year, day.month)[1]
    if part.startswith("L"):  # 'L5': the month's last Friday
        return weekday == int(part[1:]) and day.day + 7 > last
    if "#" in part:
        wanted, nth = part.split("#")
        return weekday == int(_DOW_NAMES.get(wanted, wanted)) and (day.day - 1) // 7 + 1 == int(nth)
    return weekday in _values(part, 0, 6)


def _day_matches(dom: str, dow: str, month: str, day: date) -> bool:
    """Vixie's rule: both day fields restricted means either may match."""
    if day.month not in _values(month, 1, 12):
        return False
    by_dow = any(_dow_part_matches(part, day) for part in dow.split(","))
    return _dom_matches(dom, day) or by_dow


def brute_next(expr: tuple[str, str, str, str, str], after: datetime, days: int) -> datetime | None:
    """The first matching minute after `after`, walking minute by minute through matching days."""
    minute, hour, dom, month, dow = expr
    minutes, hours = _values(minute, 0, 59), _values(hour, 0, 23)
    day = after.date()
    for _ in range(days):
        if _day_matches(dom, dow, month, day):
            at = datetime(day.year, day.month, day.day, tzinfo=UTC)
            while at.date() == day:
                if at > after and at.hour in hours and at.minute in minutes:
                    return at
                at += MINUTE
        day += timedelta(days=1)
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(*(st.sampled_from(v) for v in (MINUTE_FIELD, HOUR, DOM, MONTH, DOW))),
    st.integers(min_value=0, max_value=7 * 366 * 24 * 60),
)
def test_matches_a_brute_force_walk(expr: tuple[str, str, str, str, str], minutes: int) -> None:
    after = datetime(2024, 1, 1, tzinfo=UTC) + minutes * MINUTE
    text = " ".join(expr)
    horizon_days = 800
    expected = brute_next(expr, after, horizon_days)
    found = cron_next_ms(validate_cron(text), "UTC", ms(after.isoformat()))
    assert found is not None, text
    if expected is None:  # e.g. '31 2 MON#5': only a fifth Monday of February, years away
        assert found >= ms((after + timedelta(days=horizon_days - 1)).isoformat()), text
    else:
        assert iso(found) == expected.strftime("%Y-%m-%dT%H:%M:%SZ"), text
