"""Unit tests for ductape_jobs.timing: instants, zones, cron (with DST) and repeat rules."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ductape_jobs.errors import JobValidationError
from ductape_jobs.timing import (
    SECONDS_MS_BOUNDARY,
    Rule,
    cron_next_ms,
    first_run_ms,
    next_run_ms,
    occurrence_after_ms,
    parse_instant_ms,
    parse_zone,
    upcoming_ms,
    validate_cron,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def ms(iso: str) -> int:
    """Epoch ms of an ISO-8601 UTC instant, computed without the module under test."""
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def iso(at_ms: int) -> str:
    """Readable UTC form of an epoch-ms instant, so failures show times, not numbers."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cron_series(expr: str, tz: str, after: str, count: int) -> list[str]:
    """The next `count` cron runs after an instant, as ISO strings."""
    found: list[str] = []
    at_ms: int | None = ms(after)
    for _ in range(count):
        assert at_ms is not None
        at_ms = cron_next_ms(expr, tz, at_ms)
        assert at_ms is not None
        found.append(iso(at_ms))
    return found


# --- instants -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (0, 0),
        (0.0, 0),
        (1, 1_000),
        (1.5, 1_500),
        (1_735_689_599, 1_735_689_599_000),
        (1_735_689_599.123, 1_735_689_599_123),
        (SECONDS_MS_BOUNDARY - 1, (SECONDS_MS_BOUNDARY - 1) * 1000),  # last value read as seconds
        (SECONDS_MS_BOUNDARY, SECONDS_MS_BOUNDARY),  # first value read as milliseconds
        (float(SECONDS_MS_BOUNDARY), SECONDS_MS_BOUNDARY),
        (1_735_689_599_000, 1_735_689_599_000),
        (1_735_689_599_000.0, 1_735_689_599_000),
        ("2025-12-31T23:59:59Z", 1_767_225_599_000),
        ("2025-12-31T23:59:59z", 1_767_225_599_000),
        ("2025-12-31T23:59:59.250Z", 1_767_225_599_250),
        ("2025-12-31T23:59:59+00:00", 1_767_225_599_000),
        ("2025-12-31T18:59:59-05:00", 1_767_225_599_000),
        ("2026-01-01T01:59:59+02:00", 1_767_225_599_000),
        ("2025-12-31T23:59:59", 1_767_225_599_000),  # naive = UTC
        ("2025-12-31 23:59:59", 1_767_225_599_000),
        ("  2025-12-31T23:59:59Z  ", 1_767_225_599_000),
        ("2025-12-31", 1_767_139_200_000),  # date only = midnight UTC
        (datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), 1_767_225_599_000),
        (datetime(2025, 12, 31, 23, 59, 59), 1_767_225_599_000),  # noqa: DTZ001 - naive = UTC
        (datetime(2025, 12, 31, 18, 59, 59, tzinfo=ZoneInfo("America/New_York")), 1_767_225_599_000),
    ],
)
def test_parse_instant_accepts(value: object, expected_ms: int) -> None:
    assert parse_instant_ms(value, "start_at") == expected_ms


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (-1, "-1"),
        (-0.5, "-0.5"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (True, "True"),
        (False, "False"),
        ("", "''"),
        ("   ", "'   '"),
        ("tomorrow", "'tomorrow'"),
        ("2025-13-01T00:00:00Z", "'2025-13-01T00:00:00Z'"),
        ("1735689599", "'1735689599'"),  # a number in a string is not ISO-8601
        ("1969-12-31T23:59:59Z", "'1969-12-31T23:59:59Z'"),
        (10**20, str(10**20)),  # past the year 9999
        (None, "None"),
        ([], "[]"),
        ({"at": 1}, "{'at': 1}"),
        (date(2025, 1, 1), "datetime.date(2025, 1, 1)"),
    ],
)
def test_parse_instant_rejects(value: object, shown: str) -> None:
    with pytest.raises(JobValidationError) as caught:
        parse_instant_ms(value, "start_at")
    assert caught.value.field == "start_at"
    message = str(caught.value)
    assert shown in message  # the offending value
    assert "ISO-8601" in message or "milliseconds" in message  # and the way out
    assert isinstance(caught.value, ValueError)


def test_parse_instant_message_is_bounded() -> None:
    with pytest.raises(JobValidationError) as caught:
        parse_instant_ms("x" * 10_000, "start_at")
    assert len(str(caught.value)) < 400


@given(st.integers(min_value=1, max_value=SECONDS_MS_BOUNDARY - 1))
def test_small_integers_are_seconds(seconds: int) -> None:
    assert parse_instant_ms(seconds, "start_at") == seconds * 1000


@given(st.integers(min_value=SECONDS_MS_BOUNDARY, max_value=253_402_300_799_999))
def test_large_integers_are_milliseconds(millis: int) -> None:
    assert parse_instant_ms(millis, "start_at") == millis


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1)))  # noqa: DTZ001
def test_iso_round_trip(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=UTC)
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_instant_ms(moment.isoformat(), "start_at") == expected
    assert parse_instant_ms(moment, "start_at") == expected


# --- zones ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["UTC", "America/New_York", "Europe/London", "Etc/GMT+5"])
def test_parse_zone_accepts(name: str) -> None:
    assert parse_zone(name).key == name


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Base",
        "America",
        "",
        "America/New_York ",
        "../etc/passwd",
        "/etc/localtime",
        "localtime",
        "posixrules",
        "right/UTC",
        "posix/UTC",
        None,
        5,
        ["UTC"],
    ],
)
def test_parse_zone_rejects(name: object) -> None:
    with pytest.raises(JobValidationError) as caught:
        parse_zone(name)
    assert caught.value.field == "repeat.tz"
    assert repr(name) in str(caught.value)
    assert "America/New_York" in str(caught.value)


def test_parse_zone_field_name_is_passed_through() -> None:
    with pytest.raises(JobValidationError) as caught:
        parse_zone("Mars/Base", field="tz")
    assert caught.value.field == "tz"


# --- cron syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "normalized"),
    [
        ("0 * * * *", "0 * * * *"),
        ("  0   9 * *  *  ", "0 9 * * *"),
        ("0\t9 * * *\n*", "0 9 * * * *"),
        ("30 0 9 * * *", "30 0 9 * * *"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 15W * *", "0 0 15W * *"),
        ("0 0 * * 1#2", "0 0 * * 1#2"),
        ("0 0 * * L5", "0 0 * * L5"),
        ("0 9 * * mon-fri", "0 9 * * mon-fri"),
        ("0 0 ? * 1", "0 0 ? * 1"),
        ("0 0 29 2 *", "0 0 29 2 *"),  # leap years only, still fires
        ("0 0 31 2 1", "0 0 31 2 1"),  # day-of-month OR day-of-week: Mondays in February
    ],
)
def test_validate_cron_accepts(expr: str, normalized: str) -> None:
    assert validate_cron(expr) == normalized


@pytest.mark.parametrize(
    ("expr", "hint"),
    [
        (None, "not a cron string"),
        (5, "not a cron string"),
        (["0", "*", "*", "*", "*"], "not a cron string"),
        ("", "0 fields"),
        ("* * * *", "4 fields"),
        ("0 0 * * * * *", "7 fields"),  # croniter's year field is not part of the contract
        ("@daily", "'0 0 * * *'"),
        ("a b c d e", "not a valid cron"),
        ("61 * * * *", "not a valid cron"),
        ("0 24 * * *", "not a valid cron"),
        ("*/0 * * * *", "not a valid cron"),
        ("0 0 * * 5L", "not a valid cron"),
        ("0 0 * * 1#6", "not a valid cron"),
        ("0\u00a00 * * * *", "fields"),  # a no-break space does not separate fields
        ("H * * * *", "H/R"),
        ("R * * * *", "H/R"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_validate_cron_rejects(expr: object, hint: str) -> None:
    with pytest.raises(JobValidationError) as caught:
        validate_cron(expr)
    assert caught.value.field == "repeat.cron"
    assert hint in str(caught.value)
    assert repr(expr)[:20] in str(caught.value)


CRON_PARTS = {
    "second": ["0", "*/20", "15", "*"],
    "minute": ["0", "*/15", "30", "5-10", "*", "59", "0,30", "60", "x"],
    "hour": ["*", "9", "1", "2", "*/2", "1-3/2", "0-23", "24"],
    "dom": ["*", "L", "15W", "1", "29", "30", "31", "?", "1-7", "W1", "*/10", "0"],
    "month": ["*", "2", "feb", "jan-mar", "*/3", "12", "4,6", "13"],
    "dow": ["*", "1", "L5", "1#2", "5#5", "mon-fri", "?", "sun", "1#6", "5L"],
}


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.fixed_dictionaries({k: st.sampled_from(v) for k, v in CRON_PARTS.items()}))
def test_cron_is_refused_cleanly_or_schedules(with_seconds: bool, parts: dict[str, str]) -> None:
    names = ["minute", "hour", "dom", "month", "dow"]
    expr = " ".join(parts[name] for name in (["second", *names] if with_seconds else names))
    try:
        normalized = validate_cron(expr)
    except JobValidationError as refused:
        assert refused.field == "repeat.cron"
        assert repr(expr) in str(refused)
        return
    after_ms = ms("2027-11-07T05:10:00Z")
    for tz in ("UTC", "America/New_York"):
        found = cron_next_ms(normalized, tz, after_ms)
        assert found is not None and found > after_ms


# --- cron occurrences (UTC) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("0 * * * *", "2024-01-31T23:30:00Z", "2024-02-01T00:00:00Z"),
        ("0 * * * *", "2024-01-31T23:00:00Z", "2024-02-01T00:00:00Z"),  # strictly after
        ("0 9 * * *", "2024-02-28T10:00:00Z", "2024-02-29T09:00:00Z"),  # leap day exists
        ("0 9 * * *", "2023-02-28T10:00:00Z", "2023-03-01T09:00:00Z"),
        ("0 0 * * 0", "2024-02-29T12:00:00Z", "2024-03-03T00:00:00Z"),  # Thu -> Sun
        ("0 0 * * 0", "2024-12-29T00:00:00Z", "2025-01-05T00:00:00Z"),
        ("0 0 1 * *", "2024-01-31T00:00:00Z", "2024-02-01T00:00:00Z"),
        ("0 0 1 * *", "2024-12-15T08:00:00Z", "2025-01-01T00:00:00Z"),
        ("*/15 * * * *", "2024-12-31T23:50:00Z", "2025-01-01T00:00:00Z"),
        ("*/15 * * * *", "2024-02-29T23:59:59.999Z", "2024-03-01T00:00:00Z"),
        ("*/15 * * * *", "2024-04-30T23:45:00.001Z", "2024-05-01T00:00:00Z"),
        ("0 0 L * *", "2024-02-01T00:00:00Z", "2024-02-29T00:00:00Z"),
        ("0 0 L * *", "2023-02-01T00:00:00Z", "2023-02-28T00:00:00Z"),
        ("0 0 15W * *", "2024-06-01T00:00:00Z", "2024-06-14T00:00:00Z"),  # 15th is a Saturday
        ("0 0 * * 1#2", "2024-03-01T00:00:00Z", "2024-03-11T00:00:00Z"),
        ("0 0 * * L5", "2024-02-01T00:00:00Z", "2024-02-23T00:00:00Z"),
        ("0 0 29 2 *", "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
        ("0 0 31 2 1", "2025-01-01T00:00:00Z", "2025-02-03T00:00:00Z"),
        ("30 0 9 * * *", "2025-01-01T00:00:00Z", "2025-01-01T09:00:30Z"),  # seconds come first
        ("*/20 * * * * *", "2025-01-01T00:00:59Z", "2025-01-01T00:01:00Z"),
    ],
)
def test_cron_next_utc(expr: str, after: str, expected: str) -> None:
    assert iso(cron_next_ms(expr, "UTC", ms(after)) or 0) == expected


def test_monthly_cron_walks_month_ends_of_a_leap_year() -> None:
    runs = cron_series("0 0 1 * *", "UTC", "2023-12-31T23:59:59Z", 13)
    assert runs == [f"2024-{month:02d}-01T00:00:00Z" for month in range(1, 13)] + ["2025-01-01T00:00:00Z"]


def test_last_day_cron_walks_a_leap_year() -> None:
    runs = cron_series("0 0 L * *", "UTC", "2024-01-01T00:00:00Z", 3)
    assert runs == ["2024-01-31T00:00:00Z", "2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"]


@pytest.mark.parametrize(
    ("after", "inclusive", "expected"),
    [
        ("2025-01-01T09:00:00Z", True, "2025-01-01T09:00:00Z"),
        ("2025-01-01T09:00:00Z", False, "2025-01-02T09:00:00Z"),
        ("2025-01-01T09:00:00.001Z", True, "2025-01-02T09:00:00Z"),
        ("2025-01-01T08:59:59.999Z", False, "2025-01-01T09:00:00Z"),
    ],
)
def test_cron_next_inclusive(after: str, inclusive: bool, expected: str) -> None:
    assert iso(cron_next_ms("0 9 * * *", "UTC", ms(after), inclusive=inclusive) or 0) == expected


def test_cron_next_in_new_york_follows_the_offset() -> None:
    runs = cron_series("0 9 * * *", "America/New_York", "2027-03-12T12:00:00Z", 4)
    # 09:00 EST is 14:00Z; from 2027-03-14 it is 09:00 EDT, 13:00Z.
    assert runs == [
        "2027-03-12T14:00:00Z",
        "2027-03-13T14:00:00Z",
        "2027-03-14T13:00:00Z",
        "2027-03-15T13:00:00Z",
    ]


def test_cron_next_past_year_9999_is_none() -> None:
    assert cron_next_ms("0 0 1 1 *", "UTC", ms("9999-06-01T00:00:00Z")) is None


def test_cron_next_rejects_bad_zone_and_expression() -> None:
    with pytest.raises(JobValidationError):
        cron_next_ms("0 9 * * *", "Mars/Base", 0)
    with pytest.raises(JobValidationError):
        cron_next_ms("0 9 * *", "UTC", 0)


# --- DST ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # America/New_York falls back 2027-11-07 06:00Z (02:00 EDT -> 01:00 EST).
        pytest.param(
            "30 1 * * *",
            "America/New_York",
            "2027-11-06T12:00:00Z",
            ["2027-11-07T05:30:00Z", "2027-11-08T06:30:00Z"],
            id="ny-fall-fixed-hour-once",
        ),
        pytest.param(
            "0 * * * *",
            "America/New_York",
            "2027-11-07T04:30:00Z",
            ["2027-11-07T05:00:00Z", "2027-11-07T06:00:00Z", "2027-11-07T07:00:00Z"],
            id="ny-fall-hourly-both-passes",
        ),
        pytest.param(
            "*/15 * * * *",
            "America/New_York",
            "2027-11-07T05:30:00Z",
            [f"2027-11-07T{h:02d}:{m:02d}:00Z" for h, m in [(5, 45), (6, 0), (6, 15), (6, 30)]],
            id="ny-fall-quarter-hourly-elapsed",
        ),
        pytest.param(
            "0 */2 * * *",
            "America/New_York",
            "2027-11-07T03:30:00Z",
            ["2027-11-07T04:00:00Z", "2027-11-07T07:00:00Z"],  # 00:00 EDT, 02:00 EST
            id="ny-fall-stepped-hour",
        ),
        pytest.param(
            "0 1-3/2 * * *",
            "America/New_York",
            "2027-11-07T04:30:00Z",
            ["2027-11-07T05:00:00Z", "2027-11-07T06:00:00Z", "2027-11-07T08:00:00Z"],
            id="ny-fall-range-step-both-passes",
        ),
        pytest.param(
            "0 1,2 * * *",
            "America/New_York",
            "2027-11-07T04:30:00Z",
            ["2027-11-07T05:00:00Z", "2027-11-07T07:00:00Z"],  # 01:00 EDT only, then 02:00 EST
            id="ny-fall-hour-list-once",
        ),
        # America/New_York springs forward 2027-03-14 07:00Z (02:00 EST -> 03:00 EDT).
        pytest.param(
            "30 2 * * *",
            "America/New_York",
            "2027-03-13T12:00:00Z",
            ["2027-03-14T07:00:00Z", "2027-03-15T06:30:00Z"],
            id="ny-spring-gap-runs-at-gap-end",
        ),
        pytest.param(
            "0 * * * *",
            "America/New_York",
            "2027-03-14T05:30:00Z",
            ["2027-03-14T06:00:00Z", "2027-03-14T07:00:00Z", "2027-03-14T08:00:00Z"],
            id="ny-spring-hourly-once-at-gap-end",
        ),
        pytest.param(
            "*/15 * * * *",
            "America/New_York",
            "2027-03-14T06:30:00Z",
            ["2027-03-14T06:45:00Z", "2027-03-14T07:00:00Z", "2027-03-14T07:15:00Z"],
            id="ny-spring-quarter-hourly",
        ),
        pytest.param(
            "30 * * * *",
            "America/New_York",
            "2027-03-14T06:00:00Z",
            ["2027-03-14T06:30:00Z", "2027-03-14T07:00:00Z", "2027-03-14T07:30:00Z"],
            id="ny-spring-gap-slot-not-skipped",
        ),
        # Europe/London: spring 2027-03-28 01:00Z, fall 2027-10-31 01:00Z.
        pytest.param(
            "30 1 * * *",
            "Europe/London",
            "2027-03-27T12:00:00Z",
            ["2027-03-28T01:00:00Z", "2027-03-29T00:30:00Z"],
            id="london-spring-gap-end",
        ),
        pytest.param(
            "30 1 * * *",
            "Europe/London",
            "2027-10-30T12:00:00Z",
            ["2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z"],
            id="london-fall-fixed-hour-once",
        ),
        pytest.param(
            "0 * * * *",
            "Europe/London",
            "2027-10-30T23:30:00Z",
            ["2027-10-31T00:00:00Z", "2027-10-31T01:00:00Z", "2027-10-31T02:00:00Z"],
            id="london-fall-hourly-both-passes",
        ),
        # Six fields, seconds first, around the New York gap.
        pytest.param(
            "0 30 2 * * *",
            "America/New_York",
            "2027-03-13T12:00:00Z",
            ["2027-03-14T07:00:00Z", "2027-03-15T06:30:00Z"],
            id="ny-spring-seconds-cron-in-gap",
        ),
        pytest.param(
            "*/20 * * * * *",
            "America/New_York",
            "2027-03-14T06:59:30Z",
            ["2027-03-14T06:59:40Z", "2027-03-14T07:00:00Z", "2027-03-14T07:00:20Z"],
            id="ny-spring-every-20s-across-gap",
        ),
        pytest.param(
            "15 */30 1 * * *",
            "America/New_York",
            "2027-11-07T05:00:00Z",
            ["2027-11-07T05:00:15Z", "2027-11-07T05:30:15Z", "2027-11-08T06:00:15Z"],
            id="ny-fall-seconds-cron-fixed-hour",
        ),
    ],
)
def test_dst(expr: str, tz: str, after: str, expected: list[str]) -> None:
    assert cron_series(expr, tz, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # From inside the repeated hour: first pass 05:00-06:00Z, second pass 06:00-07:00Z.
        ("*/15 * * * *", "2027-11-07T05:10:00Z", "2027-11-07T05:15:00Z"),
        ("*/15 * * * *", "2027-11-07T05:45:00Z", "2027-11-07T06:00:00Z"),
        ("*/15 * * * *", "2027-11-07T06:10:00Z", "2027-11-07T06:15:00Z"),
        ("0 * * * *", "2027-11-07T05:10:00Z", "2027-11-07T06:00:00Z"),
        ("0 * * * *", "2027-11-07T06:59:59Z", "2027-11-07T07:00:00Z"),
        ("30 1 * * *", "2027-11-07T05:10:00Z", "2027-11-07T05:30:00Z"),
        ("30 1 * * *", "2027-11-07T05:30:00Z", "2027-11-08T06:30:00Z"),
        ("30 1 * * *", "2027-11-07T06:10:00Z", "2027-11-08T06:30:00Z"),
        ("* 1 * * *", "2027-11-07T05:10:00Z", "2027-11-07T05:11:00Z"),
        ("* 1 * * *", "2027-11-07T06:10:00Z", "2027-11-08T06:00:00Z"),
        ("*/30 1,2 * * *", "2027-11-07T06:10:00Z", "2027-11-07T07:00:00Z"),
        ("*/30 1,2 * * *", "2027-11-07T05:10:00Z", "2027-11-07T05:30:00Z"),
    ],
)
def test_dst_from_inside_the_repeated_hour(expr: str, after: str, expected: str) -> None:
    assert iso(cron_next_ms(expr, "America/New_York", ms(after)) or 0) == expected


def test_gap_run_counts_for_inclusive_search() -> None:
    gap_end = ms("2027-03-14T07:00:00Z")
    assert cron_next_ms("30 2 * * *", "America/New_York", gap_end, inclusive=True) == gap_end
    assert cron_next_ms("30 2 * * *", "America/New_York", gap_end) == ms("2027-03-15T06:30:00Z")


# --- cron properties ------------------------------------------------------------------------

PLAIN_CRONS = [
    "0 * * * *",
    "0 9 * * *",
    "0 0 * * 0",
    "0 0 1 * *",
    "*/15 * * * *",
    "5 4 * * sun",
    "0 0 L * *",
    "0 12 * * 1#2",
    "30 0 9 * * *",
]
ZONES = ["America/New_York", "Europe/London", "Australia/Sydney", "Australia/Lord_Howe", "Asia/Kolkata"]
AFTER = st.integers(min_value=ms("2001-01-01T00:00:00Z"), max_value=ms("2090-01-01T00:00:00Z"))


def croniter_next_ms(expr: str, tz: ZoneInfo, after_ms: int) -> int:
    """croniter's own answer, for comparison away from DST changes."""
    start = datetime.fromtimestamp(after_ms // 1000, tz)
    found = croniter(expr, start, ret_type=datetime, second_at_beginning=True).get_next()
    return int(found.timestamp()) * 1000


def near_offset_change(zone: ZoneInfo, at_ms: int) -> bool:
    """True when the zone's UTC offset changes within two days of an instant."""
    offsets = {datetime.fromtimestamp(at_ms / 1000 + d * 86_400, zone).utcoffset() for d in (-2, 0, 2)}
    return len(offsets) > 1


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PLAIN_CRONS), AFTER)
def test_matches_croniter_in_utc(expr: str, after_ms: int) -> None:
    expected = croniter_next_ms(expr, ZoneInfo("UTC"), after_ms)
    assert cron_next_ms(expr, "UTC", after_ms) == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PLAIN_CRONS), st.sampled_from(ZONES), AFTER)
def test_matches_croniter_away_from_dst(expr: str, tz: str, after_ms: int) -> None:
    zone = ZoneInfo(tz)
    expected = croniter_next_ms(expr, zone, after_ms)
    assume(not near_offset_change(zone, after_ms) and not near_offset_change(zone, expected))
    assert cron_next_ms(expr, tz, after_ms) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PLAIN_CRONS), st.sampled_from(ZONES), AFTER, st.booleans())
def test_strictly_increasing_and_inclusive_consistent(
    expr: str, tz: str, after_ms: int, inclusive: bool
) -> None:
    first = cron_next_ms(expr, tz, after_ms, inclusive=inclusive)
    assert first is not None
    assert first > after_ms or (inclusive and first == after_ms)
    second = cron_next_ms(expr, tz, first)
    assert second is not None and second > first
    assert cron_next_ms(expr, tz, after_ms, inclusive=True) == cron_next_ms(expr, tz, after_ms - 1)


DST_WEEKS = st.sampled_from(
    [ms(day) for day in ["2027-03-13T00:00:00Z", "2027-03-27T00:00:00Z", "2027-04-03T00:00:00Z"]]
    + [ms(day) for day in ["2027-10-02T00:00:00Z", "2027-10-30T00:00:00Z", "2027-11-06T00:00:00Z"]]
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["*/15 * * * *", "*/5 * * * *"]),
    st.sampled_from(ZONES),
    DST_WEEKS,
    st.integers(min_value=0, max_value=3 * DAY_MS),
)
def test_stepped_minutes_follow_elapsed_time_through_dst(
    expr: str, tz: str, week_ms: int, offset_ms: int
) -> None:
    step_ms = int(expr.split("/")[1].split()[0]) * MINUTE_MS
    at_ms = cron_next_ms(expr, tz, week_ms + offset_ms)
    for _ in range(30):
        assert at_ms is not None
        following = cron_next_ms(expr, tz, at_ms)
        assert following == at_ms + step_ms, (iso(at_ms), iso(following or 0))
        at_ms = following


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=23),
    st.sampled_from(ZONES),
    DST_WEEKS,
)
def test_fixed_time_runs_once_per_local_day_through_dst(
    minute: int, hour: int, tz: str, week_ms: int
) -> None:
    zone = ZoneInfo(tz)
    expr = f"{minute} {hour} * * *"
    at_ms = cron_next_ms(expr, tz, week_ms)
    for _ in range(8):
        assert at_ms is not None
        following = cron_next_ms(expr, tz, at_ms)
        assert following is not None
        assert 23 * HOUR_MS <= following - at_ms <= 25 * HOUR_MS
        day = datetime.fromtimestamp(at_ms / 1000, zone).date()
        assert datetime.fromtimestamp(following / 1000, zone).date() == day + timedelta(days=1)
        at_ms = following


# --- rules ----------------------------------------------------------------------------------

T0 = ms("2025-06-01T10:00:00Z")
EVERY_MINUTE = Rule(every_ms=MINUTE_MS)
HOURLY = Rule(cron="0 * * * *")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "repeat"),
        ({"cron": "0 * * * *", "every_ms": 1000}, "repeat"),
        ({"every_ms": 0}, "repeat.every"),
        ({"every_ms": 1000, "limit": 0}, "repeat.limit"),
        ({"every_ms": 1000, "catchup_ms": -1}, "repeat.catchup_ms"),
    ],
)
def test_rule_rejects_inconsistent_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(JobValidationError) as caught:
        Rule(**kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("rule", "start_ms", "now_ms", "expected_ms"),
    [
        (EVERY_MINUTE, 0, T0, T0),  # start_at 0 = now
        (EVERY_MINUTE, T0 + 5_000, T0, T0 + 5_000),  # later start wins
        (EVERY_MINUTE, T0 - 5_000, T0, T0),  # past start = now
        (HOURLY, 0, T0, T0),  # now is on a match: runs now (>=)
        (HOURLY, 0, T0 + 1, T0 + HOUR_MS),  # no extra immediate run
        (HOURLY, T0 + 90 * MINUTE_MS, T0, T0 + 2 * HOUR_MS),
        (Rule(cron="0 9 * * *", tz="America/New_York"), 0, T0, ms("2025-06-01T13:00:00Z")),
        (Rule(every_ms=MINUTE_MS, end_ms=T0), 0, T0, T0),  # end is inclusive
        (Rule(every_ms=MINUTE_MS, end_ms=T0 - 1), 0, T0, None),
        (Rule(cron="0 * * * *", end_ms=T0 + HOUR_MS - 1), 0, T0 + 1, None),
        (Rule(cron="0 * * * *", end_ms=T0 + HOUR_MS), 0, T0 + 1, T0 + HOUR_MS),
    ],
)
def test_first_run(rule: Rule, start_ms: int, now_ms: int, expected_ms: int | None) -> None:
    assert first_run_ms(rule, start_ms, now_ms) == expected_ms


@pytest.mark.parametrize(
    ("rule", "anchor_ms", "after_ms", "expected_ms"),
    [
        (Rule(every_ms=MINUTE_MS), T0 + 7_000, T0 + 7_000, T0 + 67_000),  # keeps the :07 phase
        (Rule(every_ms=MINUTE_MS), T0 + 7_000, T0 + 66_999, T0 + 67_000),
        (Rule(every_ms=MINUTE_MS), T0 + 7_000, T0 + 67_000, T0 + 127_000),
        (Rule(every_ms=MINUTE_MS), T0 + 7_000, T0 + 10 * HOUR_MS, T0 + 10 * HOUR_MS + 7_000),
        (Rule(every_ms=MINUTE_MS), T0 + 7_000, T0, T0 + 7_000),  # never before the anchor
        (Rule(every_ms=90 * DAY_MS), T0, T0, T0 + 90 * DAY_MS),
        (HOURLY, T0, T0, T0 + HOUR_MS),
        (HOURLY, T0, T0 - DAY_MS, T0),  # never before the anchor
        (Rule(every_ms=MINUTE_MS, limit=1, end_ms=T0), T0, T0, T0 + MINUTE_MS),  # ignores both
    ],
)
def test_occurrence_after(rule: Rule, anchor_ms: int, after_ms: int, expected_ms: int) -> None:
    assert occurrence_after_ms(rule, anchor_ms, after_ms) == expected_ms


@pytest.mark.parametrize(
    ("rule", "released_ms", "runs_done", "now_ms", "expected_ms"),
    [
        # On time: the next slot on phase.
        (EVERY_MINUTE, T0, 1, T0, T0 + MINUTE_MS),
        (HOURLY, T0, 1, T0 + 1, T0 + HOUR_MS),
        # limit counts the first run.
        (Rule(every_ms=MINUTE_MS, limit=1), T0, 1, T0, None),
        (Rule(every_ms=MINUTE_MS, limit=3), T0 + MINUTE_MS, 2, T0, T0 + 2 * MINUTE_MS),
        (Rule(every_ms=MINUTE_MS, limit=3), T0 + 2 * MINUTE_MS, 3, T0, None),
        # end_ms is inclusive.
        (Rule(every_ms=MINUTE_MS, end_ms=T0 + MINUTE_MS), T0, 1, T0, T0 + MINUTE_MS),
        (Rule(every_ms=MINUTE_MS, end_ms=T0 + MINUTE_MS - 1), T0, 1, T0, None),
        # skip: down for 5.5 minutes, resume at the first on-phase slot >= now.
        (EVERY_MINUTE, T0, 1, T0 + 330_000, T0 + 360_000),
        (EVERY_MINUTE, T0, 1, T0 + 360_000, T0 + 360_000),  # a slot exactly now is due now
        (HOURLY, T0, 1, T0 + 3 * HOUR_MS + 20 * MINUTE_MS, T0 + 4 * HOUR_MS),
        (Rule(every_ms=MINUTE_MS, limit=3), T0, 1, T0 + 330_000, T0 + 360_000),  # skips not counted
        (Rule(every_ms=MINUTE_MS, end_ms=T0 + 300_000), T0, 1, T0 + 330_000, None),
        # run_all: slots inside the catch-up window are kept, older ones skipped.
        (Rule(every_ms=MINUTE_MS, misfire="run_all", catchup_ms=150_000), T0, 1, T0 + 630_000, T0 + 480_000),
        (Rule(every_ms=MINUTE_MS, misfire="run_all", catchup_ms=DAY_MS), T0, 1, T0 + 630_000, T0 + MINUTE_MS),
        (Rule(every_ms=MINUTE_MS, misfire="run_all"), T0, 1, T0 + 630_000, T0 + 660_000),  # window 0
        (Rule(every_ms=MINUTE_MS, catchup_ms=150_000), T0, 1, T0 + 630_000, T0 + 660_000),  # skip ignores it
        (
            Rule(cron="0 * * * *", misfire="run_all", catchup_ms=2 * HOUR_MS),
            T0,
            1,
            T0 + 5 * HOUR_MS,
            T0 + 3 * HOUR_MS,
        ),
    ],
)
def test_next_run(rule: Rule, released_ms: int, runs_done: int, now_ms: int, expected_ms: int | None) -> None:
    assert next_run_ms(rule, T0, released_ms, runs_done, now_ms) == expected_ms


def test_run_all_releases_missed_runs_one_by_one() -> None:
    rule = Rule(every_ms=MINUTE_MS, misfire="run_all", catchup_ms=150_000)
    now_ms = T0 + 630_000  # down since the first run; the window reaches back to T0 + 8 min
    released, runs_done, history = T0, 1, []
    for _ in range(4):
        nxt = next_run_ms(rule, T0, released, runs_done, now_ms)
        assert nxt is not None
        history.append((nxt - T0) // MINUTE_MS)
        released, runs_done = nxt, runs_done + 1
    assert history == [8, 9, 10, 11]  # 8, 9, 10 are caught up; 11 is the first future slot


def test_skip_keeps_dst_rules() -> None:
    rule = Rule(cron="30 1 * * *", tz="America/New_York")
    released = ms("2027-11-06T05:30:00Z")
    # Beat was down from before the fall-back until inside the second 01:xx pass.
    nxt = next_run_ms(rule, released, released, 1, ms("2027-11-07T06:10:00Z"))
    assert nxt is not None and iso(nxt) == "2027-11-08T06:30:00Z"


@pytest.mark.parametrize(
    ("rule", "next_ms", "runs_done", "n", "expected_ms"),
    [
        (EVERY_MINUTE, T0, 0, 3, [T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS]),
        (EVERY_MINUTE, T0 + MINUTE_MS, 5, 2, [T0 + MINUTE_MS, T0 + 2 * MINUTE_MS]),
        (
            Rule(every_ms=MINUTE_MS, limit=5),
            T0 + 2 * MINUTE_MS,
            2,
            10,
            [T0 + k * MINUTE_MS for k in (2, 3, 4)],
        ),
        (Rule(every_ms=MINUTE_MS, limit=5), T0 + 5 * MINUTE_MS, 5, 10, []),
        (
            Rule(every_ms=MINUTE_MS, end_ms=T0 + 2 * MINUTE_MS),
            T0,
            0,
            10,
            [T0 + k * MINUTE_MS for k in (0, 1, 2)],
        ),
        (Rule(every_ms=MINUTE_MS, end_ms=T0 - 1), T0, 0, 10, []),
        (HOURLY, T0, 0, 3, [T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS]),
        (Rule(cron="0 * * * *", limit=2), T0, 0, 5, [T0, T0 + HOUR_MS]),
        (EVERY_MINUTE, None, 0, 5, []),
        (EVERY_MINUTE, T0, 0, 0, []),
    ],
)
def test_upcoming(rule: Rule, next_ms: int | None, runs_done: int, n: int, expected_ms: list[int]) -> None:
    assert upcoming_ms(rule, T0, next_ms, runs_done, n) == expected_ms


def test_upcoming_crosses_dst_with_the_same_rules() -> None:
    rule = Rule(cron="30 1 * * *", tz="America/New_York")
    first = ms("2027-11-06T05:30:00Z")
    assert [iso(t) for t in upcoming_ms(rule, first, first, 0, 3)] == [
        "2027-11-06T05:30:00Z",
        "2027-11-07T05:30:00Z",
        "2027-11-08T06:30:00Z",
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1_000, max_value=DAY_MS),
    st.integers(min_value=0, max_value=10 * DAY_MS),
    st.integers(min_value=0, max_value=10 * DAY_MS),
)
def test_every_stays_on_phase(every_ms: int, released_offset: int, now_offset: int) -> None:
    released_slot = released_offset // every_ms
    now_ms = T0 + now_offset
    # On time: the slot after the released one; late: the first slot at or after now.
    expected_slot = max(released_slot + 1, -(-now_offset // every_ms))
    nxt = next_run_ms(Rule(every_ms=every_ms), T0, T0 + released_slot * every_ms, 1, now_ms)
    assert nxt == T0 + expected_slot * every_ms
