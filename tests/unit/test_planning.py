"""Unit tests for plan_job: the settings-dependent rules and the first-run decision.

Pure: no Redis, and the clock is an argument (NOW), so every decision is pinned to an instant.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from ductape_jobs.errors import JobValidationError, SessionError
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import check_input, plan_job
from ductape_jobs.records import NewJob
from ductape_jobs.sessions import Sessions, session_types_from_config
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobStatus

JOB = "job1"
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY


def ms(text: str) -> int:
    """An ISO-8601 UTC instant as epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


NOW = ms("2024-06-01T00:00:00")  # a Saturday; 20:00 EDT on Friday in New York
SESSION_SECRET = "unit-test-session-secret-0123456789abcdef"
SETTINGS = Settings(
    caches={"short": {"ttl_ms": 60_000}},
    sessions={"user-session": {"secret": SESSION_SECRET, "expiry_s": 3600}},
)
SESSIONS = Sessions(session_types_from_config(SETTINGS.sessions))
HORIZON = SETTINGS.horizon_ms

BASE: dict[str, Any] = {
    "env": "prd",
    "product_tag": "billing",
    "event": "process_payment",
    "start_at": 0,
    "retries": 3,
    "input": {"orderId": "order_456", "amount": 99.99},
}


def request(**overrides: Any) -> dict[str, Any]:
    return {**BASE, **overrides}


def plan(data: dict[str, Any], now: int = NOW, settings: Settings = SETTINGS) -> NewJob:
    return plan_job(JobRequest.parse(data), settings, SESSIONS, now, JOB)


def refused(
    data: dict[str, Any], field: str, *shown: str, now: int = NOW, settings: Settings = SETTINGS
) -> JobValidationError:
    """plan_job refuses with one JobValidationError naming ``field`` and showing each of ``shown``."""
    req = JobRequest.parse(data)  # the model accepts it: the rule lives in planning
    with pytest.raises(JobValidationError) as caught:
        plan_job(req, settings, SESSIONS, now, JOB)
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.field == field, str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    for part in shown:
        assert part in str(err), f"{part!r} missing from {str(err)!r}"
    return err


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """A dict ``depth`` levels deep (``{"a": leaf}`` is depth 1)."""
    value: Any = leaf
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


# -- settings-dependent refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "shown"),
    [
        pytest.param(
            {"env": "qa"}, "env", ("'qa'", "'dev', 'staging', 'prd'", "DUCTAPE_ENVS"), id="unknown-env"
        ),
        pytest.param({"env": "PRD"}, "env", ("'PRD'", "DUCTAPE_ENVS"), id="env-is-case-sensitive"),
        pytest.param({"env": "production"}, "env", ("'production'",), id="env-spelled-out"),
        pytest.param({"cache": "long"}, "cache", ("'long'", "'short'", "DUCTAPE_CACHES"), id="unknown-cache"),
        pytest.param(
            {"repeat": {"every": 999}},
            "repeat.every",
            ("999 ms", "minimum of 1000 ms", "DUCTAPE_MIN_EVERY_MS"),
            id="every-below-minimum",
        ),
        pytest.param(
            {"repeat": {"every": 1}}, "repeat.every", ("1 ms", "86400000 = 24 h"), id="every-in-seconds"
        ),
        pytest.param(
            {"repeat": {"every": 10**18}}, "repeat.every", (str(10**18), "year 9999"), id="every-huge"
        ),
        pytest.param(  # found by tests/integration/test_read_back.py: the first run was in 10000
            {"start_at": 253_402_300_799_999, "repeat": {"cron": "*/1 * * * * *"}},
            "start_at",
            ("first run would fall after the year 9999",),
            id="cron-first-run-after-9999",
        ),
    ],
)
def test_settings_rules_refuse(overrides: dict[str, Any], field: str, shown: tuple[str, ...]) -> None:
    refused(request(**overrides), field, *shown)


def test_unknown_cache_with_none_configured_says_so() -> None:
    refused(request(cache="short"), "cache", "'short'", "none configured", settings=Settings())


def test_configured_env_and_cache_are_accepted() -> None:
    settings = Settings(envs=("qa",), caches={"long": {"ttl_ms": DAY}})
    job = plan(request(env="qa", cache="long"), settings=settings)
    assert (job.spec.env, job.spec.cache) == ("qa", "long")


@pytest.mark.parametrize(("every", "accepted"), [(MINUTE - 1, False), (MINUTE, True), (MINUTE + 1, True)])
def test_every_minimum_is_configurable(every: int, accepted: bool) -> None:
    settings = Settings(min_every_ms=MINUTE)
    data = request(repeat={"every": every})
    if accepted:
        assert plan(data, settings=settings).spec.rule["every_ms"] == every  # type: ignore[index]
    else:
        refused(data, "repeat.every", f"{every} ms", "minimum of 60000 ms", settings=settings)


def test_every_at_the_default_minimum_is_accepted() -> None:
    assert plan(request(repeat={"every": 1000})).next_run_ms == NOW + 1000


def test_huge_every_with_limit_one_is_accepted() -> None:
    job = plan(request(repeat={"every": 10**18, "limit": 1}))
    assert (job.status, job.next_run_ms, job.runs_done) == (JobStatus.COMPLETED, None, 1)


# -- input: size, depth, JSON -------------------------------------------------------------------------


def test_oversized_input_is_refused() -> None:
    blob = "x" * SETTINGS.max_input_bytes
    size = len(f'{{"blob":"{blob}"}}')
    refused(
        request(input={"blob": blob}),
        "input",
        f"is {size} bytes",
        "limit is 262144",
        "DUCTAPE_MAX_INPUT_BYTES",
        "pass a reference",
    )


@pytest.mark.parametrize(("padding", "accepted"), [(0, True), (1, False)])
def test_input_size_limit_is_inclusive(padding: int, accepted: bool) -> None:
    settings = Settings(max_input_bytes=20)
    value = {"k": "x" * (12 + padding)}  # {"k":"xxxxxxxxxxxx"} is exactly 20 bytes
    if accepted:
        check_input(value, settings)
    else:
        refused(request(input=value), "input", "is 21 bytes", "limit is 20", settings=settings)


def test_input_size_counts_utf8_bytes() -> None:
    settings = Settings(max_input_bytes=20)
    refused(request(input={"k": "\u00e9" * 12}), "input", "bytes", "limit is 20", settings=settings)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        pytest.param(nested(32), True, id="depth-32"),
        pytest.param(nested(33), False, id="depth-33"),
        pytest.param(nested(32, leaf=[]), False, id="list-at-depth-33"),
        pytest.param(nested(32, leaf=[1, "x"]), False, id="scalars-in-list-at-depth-33"),
        pytest.param({"a": [[[[1]]]] * 3}, True, id="lists-count"),
        pytest.param(nested(100), False, id="depth-101"),
    ],
)
def test_input_depth_limit(value: dict[str, Any], accepted: bool) -> None:
    if accepted:
        check_input(value, SETTINGS)
    else:
        refused(request(input=value), "input", "nested deeper than 32 levels", "DUCTAPE_MAX_INPUT_DEPTH")


def test_tuples_count_toward_depth() -> None:
    value: Any = 1
    for _ in range(40):
        value = (value,)
    refused(request(input={"t": value}), "input", "nested deeper than 32 levels")


def test_depth_limit_is_configurable() -> None:
    settings = Settings(max_input_depth=2)
    check_input(nested(2), settings)
    refused(request(input=nested(3)), "input", "deeper than 2 levels", "input.a.a", settings=settings)


def test_cyclic_input_is_refused_not_crashed() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    refused(request(input={"loop": loop}), "input", "nested deeper")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param({"tags": {"a", "b"}}, ("input.tags", "(set)"), id="set"),
        pytest.param({"raw": b"\x00"}, ("input.raw", "b'\\x00'", "(bytes)"), id="bytes"),
        pytest.param({"n": math.nan}, ("input.n", "nan"), id="nan"),
        pytest.param({"n": [1, math.inf]}, ("input.n[1]", "inf"), id="inf-in-list"),
        pytest.param({"when": date(2024, 1, 1)}, ("input.when", "(date)"), id="date"),
        pytest.param({"price": Decimal("9.99")}, ("input.price", "Decimal('9.99')"), id="decimal"),
        pytest.param({"obj": object()}, ("input.obj", "(object)"), id="object"),
        pytest.param({"a": {1: "one"}}, ("input.a", "key 1 (int)"), id="int-key-nested"),
        pytest.param({"a": [{None: 1}]}, ("input.a[0]", "key None"), id="none-key-in-list"),
    ],
)
def test_non_json_input_is_refused(value: dict[str, Any], shown: tuple[str, ...]) -> None:
    refused(
        request(input=value),
        "input",
        *shown,
        "not JSON" if "key" not in shown[-1] else "string keys",
        "use only objects with string keys",
    )


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"s": "x", "i": 1, "f": 1.5, "t": True, "n": None, "l": [1, "a", None], "d": {"e": {}}},
        {"t": (1, 2)},
        {"big": 10**30},
        {"unicode": "\u2603"},
    ],
)
def test_json_input_is_accepted(value: dict[str, Any]) -> None:
    assert plan(request(input=value)).spec.input == value


# -- sessions ----------------------------------------------------------------------------------------


def token(data: dict[str, Any], now: int = NOW) -> str:
    return SESSIONS.start("user-session", data, now_s=now / 1000)


@pytest.mark.parametrize(
    "value",
    [
        {"userId": "$Session{user}{id}"},
        {"deep": {"list": ["hello $Session{user}{name}"]}},
    ],
)
def test_placeholders_without_a_session_are_refused(value: dict[str, Any]) -> None:
    err = refused(request(input=value), "session", "$Session{...}", "pass session={tag, token}")
    assert isinstance(err, SessionError)


def test_placeholders_are_resolved_and_masked() -> None:
    tok = token({"user": {"id": 42, "email": "a@example.com"}})
    job = plan(
        request(input={"userId": "$Session{user}{id}", "n": 1}, session={"tag": "user-session", "token": tok})
    )
    assert job.spec.input["n"] == 1
    assert job.spec.input["userId"] != 42 and "42" not in str(job.spec.input)
    assert job.spec.session_tag == "user-session" and job.spec.sealed


def test_expired_session_is_judged_at_the_time_passed_in() -> None:
    tok = token({"user": {"id": 42}})
    data = request(input={"userId": "$Session{user}{id}"}, session={"tag": "user-session", "token": tok})
    plan(data, now=NOW + 3599 * SECOND)
    err = refused(data, "session.token", "expired", now=NOW + 3601 * SECOND)
    assert isinstance(err, SessionError)
    assert tok.split(":")[-1] not in str(err)


def test_missing_session_path_is_refused_without_the_token() -> None:
    tok = token({"user": {"id": 42}})
    with pytest.raises(SessionError) as caught:
        plan(request(input={"x": "$Session{user}{phone}"}, session={"tag": "user-session", "token": tok}))
    assert "phone" in str(caught.value)
    assert tok.split(":")[-1] not in str(caught.value)


def test_resolved_input_is_size_checked() -> None:
    settings = Settings(max_input_bytes=64, sessions=SETTINGS.sessions)
    tok = token({"blob": "x" * 100})
    with pytest.raises(JobValidationError) as caught:
        plan_job(
            JobRequest.parse(
                request(input={"b": "$Session{blob}"}, session={"tag": "user-session", "token": tok})
            ),
            settings,
            SESSIONS,
            NOW,
            JOB,
        )
    assert caught.value.field == "input" and "limit is 64" in str(caught.value)


# -- endDate against the clock and the first run -----------------------------------------------------


@pytest.mark.parametrize(
    "end",
    [
        pytest.param("2024-05-31T23:59:59Z", id="iso"),
        pytest.param(NOW // 1000 - 1, id="seconds"),
        pytest.param(NOW - 1, id="milliseconds"),
        pytest.param("2020-01-01", id="long-ago"),
    ],
)
def test_end_date_in_the_past_is_refused(end: object) -> None:
    refused(
        request(repeat={"every": HOUR, "endDate": end}),
        "repeat.endDate",
        "already past",
        "give a later end date",
    )


def test_end_date_past_message_shows_the_date() -> None:
    refused(
        request(repeat={"every": HOUR, "endDate": "2024-05-31T23:59:59Z"}),
        "repeat.endDate",
        "2024-05-31T23:59:59+00:00",
    )


@pytest.mark.parametrize(
    ("repeat", "start_at", "first"),
    [
        pytest.param(
            {"every": HOUR, "endDate": "2024-06-15T00:00:00Z"},
            "2024-07-01T00:00:00Z",
            "2024-07-01T00:00:00+00:00",
            id="every-start-after-end",
        ),
        pytest.param(
            {"cron": "0 9 * * *", "tz": "America/New_York", "endDate": "2024-06-01T12:59:59Z"},
            0,
            "2024-06-01T13:00:00+00:00",
            id="cron-first-match-after-end",
        ),
        pytest.param(
            {"cron": "0 0 1 1 *", "endDate": "2024-12-31T23:59:59Z"},
            0,
            "2025-01-01T00:00:00+00:00",
            id="yearly-cron",
        ),
    ],
)
def test_end_date_before_the_first_run_is_refused(
    repeat: dict[str, Any], start_at: object, first: str
) -> None:
    refused(
        request(start_at=start_at, repeat=repeat),
        "repeat.endDate",
        "before the first run",
        first,
        "give a later end date or an earlier start_at",
    )


def test_end_date_equal_to_now_allows_one_run() -> None:
    job = plan(request(repeat={"every": HOUR, "endDate": NOW}))
    assert (job.status, job.runs_done, job.run_id, job.next_run_ms) == (
        JobStatus.COMPLETED,
        1,
        f"{JOB}:{NOW}",
        None,
    )


def test_end_date_equal_to_the_first_cron_match_is_allowed() -> None:
    job = plan(
        request(repeat={"cron": "0 9 * * *", "tz": "America/New_York", "endDate": "2024-06-01T13:00:00Z"})
    )
    assert job.next_run_ms == ms("2024-06-01T13:00:00")


@pytest.mark.parametrize(("end", "next_ms"), [(NOW + HOUR, NOW + HOUR), (NOW + HOUR - 1, None)])
def test_end_date_is_inclusive(end: int, next_ms: int | None) -> None:
    job = plan(request(repeat={"every": HOUR, "endDate": end}))
    assert job.next_run_ms == next_ms
    assert job.status == (JobStatus.SCHEDULED if next_ms else JobStatus.COMPLETED)


# -- one-off jobs: now, within the horizon, beyond it ------------------------------------------------


@pytest.mark.parametrize(
    ("start_at", "run_at"),
    [
        pytest.param(0, NOW, id="zero-is-now"),
        pytest.param(NOW, NOW, id="exactly-now"),
        pytest.param(NOW + 30 * SECOND, NOW + 30 * SECOND, id="30s-ahead-ms"),
        pytest.param(NOW // 1000 + 30, NOW + 30 * SECOND, id="30s-ahead-seconds"),
        pytest.param("2024-06-01T00:00:45Z", NOW + 45 * SECOND, id="45s-ahead-iso"),
        pytest.param(NOW + HORIZON, NOW + HORIZON, id="at-the-horizon"),
        pytest.param(1704067200, NOW, id="past-seconds-runs-now"),
        pytest.param(NOW - 1, NOW, id="one-ms-ago-runs-now"),
        pytest.param(1, NOW, id="1970-runs-now"),
    ],
)
def test_one_off_within_the_horizon_is_queued(start_at: object, run_at: int) -> None:
    job = plan(request(start_at=start_at))
    assert job.status == JobStatus.QUEUED
    assert (job.run_id, job.nominal_ms, job.anchor_ms) == (f"{JOB}:{run_at}", run_at, run_at)
    assert (job.recurring, job.runs_done, job.next_run_ms, job.due_ms) == (False, 1, None, None)


@pytest.mark.parametrize(
    ("start_at", "due"),
    [
        pytest.param(NOW + HORIZON + 1, NOW + HORIZON + 1, id="just-past-the-horizon"),
        pytest.param("2024-06-02T00:00:00Z", NOW + DAY, id="tomorrow-iso"),
        pytest.param(NOW // 1000 + 3600, NOW + HOUR, id="an-hour-ahead-seconds"),
        pytest.param("2030-01-01T00:00:00", ms("2030-01-01T00:00:00"), id="years-ahead-naive"),
    ],
)
def test_one_off_beyond_the_horizon_is_scheduled(start_at: object, due: int) -> None:
    job = plan(request(start_at=start_at))
    assert job.status == JobStatus.SCHEDULED
    assert (job.next_run_ms, job.due_ms, job.anchor_ms) == (due, due, due)
    assert (job.run_id, job.nominal_ms, job.runs_done, job.recurring) == (None, None, 0, False)


def test_horizon_is_a_setting() -> None:
    settings = Settings(horizon_ms=5 * MINUTE)
    assert plan(request(start_at=NOW + 4 * MINUTE), settings=settings).status == JobStatus.QUEUED
    assert plan(request(start_at=NOW + 4 * MINUTE)).status == JobStatus.SCHEDULED


def test_spec_carries_the_request() -> None:
    job = plan(request(app="web", cache="short", start_at=NOW + HOUR))
    spec = job.spec
    assert (spec.env, spec.product_tag, spec.event, spec.retries, spec.app, spec.cache) == (
        "prd",
        "billing",
        "process_payment",
        3,
        "web",
        "short",
    )
    assert (spec.start_ms, spec.created_ms, spec.input, spec.rule) == (NOW + HOUR, NOW, BASE["input"], None)


# -- repeats: the first run --------------------------------------------------------------------------


def test_every_with_start_at_zero_runs_now_and_keeps_the_phase() -> None:
    job = plan(request(repeat={"every": HOUR}))
    assert (job.status, job.recurring, job.runs_done) == (JobStatus.SCHEDULED, True, 1)
    assert (job.run_id, job.nominal_ms, job.anchor_ms) == (f"{JOB}:{NOW}", NOW, NOW)
    assert (job.next_run_ms, job.due_ms, job.dedupe) == (NOW + HOUR, NOW + HOUR, True)


def test_every_with_start_at_in_the_past_runs_now() -> None:
    job = plan(request(start_at=1704067200, repeat={"every": HOUR}))
    assert (job.nominal_ms, job.next_run_ms) == (NOW, NOW + HOUR)


@pytest.mark.parametrize("start", [NOW + 30 * SECOND, NOW + DAY])
def test_every_with_a_future_start_waits_for_it(start: int) -> None:
    job = plan(request(start_at=start, repeat={"every": HOUR}))
    assert (job.status, job.recurring, job.runs_done, job.run_id) == (JobStatus.SCHEDULED, True, 0, None)
    assert (job.next_run_ms, job.due_ms, job.anchor_ms) == (start, start, start)


@pytest.mark.parametrize(
    ("repeat", "now", "first"),
    [
        pytest.param(
            {"cron": "0 9 * * *", "tz": "America/New_York"}, NOW, ms("2024-06-01T13:00:00"), id="9am-new-york"
        ),
        pytest.param(
            {"cron": "0 0 * * *", "tz": "America/New_York"},
            NOW,
            ms("2024-06-01T04:00:00"),
            id="midnight-new-york-not-utc",
        ),
        pytest.param({"cron": "0 9 * * *"}, NOW, ms("2024-06-01T09:00:00"), id="9am-utc"),
        pytest.param({"cron": "0 * * * *"}, NOW + 1, NOW + HOUR, id="hourly"),
        pytest.param({"cron": "*/15 * * * *"}, NOW + MINUTE, NOW + 15 * MINUTE, id="every-15-minutes"),
        pytest.param({"cron": "0 0 * * 0"}, NOW, ms("2024-06-02T00:00:00"), id="sunday-midnight"),
        pytest.param({"cron": "0 0 1 * *"}, NOW + 1, ms("2024-07-01T00:00:00"), id="first-of-month"),
        pytest.param({"cron": "30 0 9 * * *"}, NOW, ms("2024-06-01T09:00:30"), id="six-fields"),
    ],
)
def test_cron_with_start_at_zero_adds_no_immediate_run(repeat: dict[str, Any], now: int, first: int) -> None:
    job = plan(request(repeat=repeat), now=now)
    assert (job.status, job.recurring, job.runs_done, job.run_id, job.nominal_ms) == (
        JobStatus.SCHEDULED,
        True,
        0,
        None,
        None,
    )
    assert (job.next_run_ms, job.due_ms, job.anchor_ms, job.dedupe) == (first, first, first, True)


@pytest.mark.parametrize(
    ("cron", "next_ms"),
    [("0 0 * * *", NOW + DAY), ("0 * * * *", NOW + HOUR), ("*/15 * * * *", NOW + 15 * MINUTE)],
)
def test_cron_matching_now_runs_now(cron: str, next_ms: int) -> None:
    # NOW is exactly 00:00Z: "the first match at or after now" is now itself.
    job = plan(request(repeat={"cron": cron}))
    assert (job.status, job.runs_done, job.run_id, job.next_run_ms) == (
        JobStatus.SCHEDULED,
        1,
        f"{JOB}:{NOW}",
        next_ms,
    )


def test_cron_first_run_is_the_first_match_at_or_after_start_at() -> None:
    start = ms("2024-06-03T13:00:00")  # Monday 09:00 in New York, a match itself
    job = plan(request(start_at=start, repeat={"cron": "0 9 * * *", "tz": "America/New_York"}))
    assert (job.next_run_ms, job.runs_done) == (start, 0)
    later = plan(request(start_at=start + 1, repeat={"cron": "0 9 * * *", "tz": "America/New_York"}))
    assert later.next_run_ms == start + DAY


@pytest.mark.parametrize(
    ("limit", "status", "next_ms"),
    [
        pytest.param(1, JobStatus.COMPLETED, None, id="limit-1-done-after-first"),
        pytest.param(2, JobStatus.SCHEDULED, NOW + HOUR, id="limit-2"),
        pytest.param(None, JobStatus.SCHEDULED, NOW + HOUR, id="no-limit"),
    ],
)
def test_limit_counts_the_first_run(limit: int | None, status: JobStatus, next_ms: int | None) -> None:
    job = plan(request(repeat={"every": HOUR, "limit": limit}))
    assert (job.status, job.runs_done, job.run_id, job.next_run_ms, job.due_ms) == (
        status,
        1,
        f"{JOB}:{NOW}",
        next_ms,
        next_ms,
    )
    assert job.dedupe is (next_ms is not None)


def test_rule_is_stored_normalized() -> None:
    job = plan(
        request(
            repeat={
                "cron": "0  9 * * *",
                "tz": "America/New_York",
                "limit": 4,
                "endDate": "2030-01-01T00:00:00Z",
            }
        )
    )
    assert job.spec.rule == {
        "cron": "0 9 * * *",
        "tz": "America/New_York",
        "every_ms": None,
        "limit": 4,
        "end_ms": ms("2030-01-01T00:00:00"),
        "misfire": "skip",
        "catchup_ms": 0,
        "overlap": "skip",  # the default for new schedules
    }


def test_empty_repeat_plans_a_one_off() -> None:
    job = plan(request(repeat={}))
    assert (job.recurring, job.spec.rule, job.status) == (False, None, JobStatus.QUEUED)


# -- the seed's seven examples -----------------------------------------------------------------------

SEED: dict[str, dict[str, Any]] = {
    "quick-example": {
        "env": "prd",
        "product_tag": "my-app",
        "event": "send_welcome_email",
        "start_at": 0,
        "retries": 3,
        "input": {"userId": "user_123", "email": "john@example.com"},
    },
    "run-immediately": {
        "env": "prd",
        "product_tag": "billing",
        "event": "process_payment",
        "start_at": 0,
        "retries": 3,
        "input": {"orderId": "order_456", "amount": 99.99},
    },
    "specific-time": {
        "env": "prd",
        "product_tag": "marketing",
        "event": "send_campaign",
        "start_at": 1704067200,
        "retries": 2,
        "input": {"campaignId": "camp_123", "audience": "active_users"},
    },
    "cron": {
        "env": "prd",
        "product_tag": "reports",
        "event": "generate_daily_report",
        "start_at": 0,
        "retries": 2,
        "input": {},
        "repeat": {"cron": "0 9 * * *", "tz": "America/New_York"},
    },
    "interval": {
        "env": "prd",
        "product_tag": "sync",
        "event": "sync_inventory",
        "start_at": 0,
        "retries": 3,
        "input": {},
        "repeat": {"every": 86400000},
    },
    "limited": {
        "env": "prd",
        "product_tag": "reminders",
        "event": "send_reminder",
        "start_at": 0,
        "retries": 2,
        "input": {"userId": "user_123"},
        "repeat": {"every": 604800000, "limit": 4},
    },
    "until-a-date": {
        "env": "prd",
        "product_tag": "promo",
        "event": "check_promo_status",
        "start_at": 0,
        "retries": 1,
        "input": {},
        "repeat": {"every": 86400000, "endDate": "2025-12-31T23:59:59Z"},
    },
    "session": {
        "env": "prd",
        "product_tag": "notifications",
        "event": "send_digest",
        "start_at": 0,
        "retries": 3,
        "input": {"userId": "$Session{user}{id}", "email": "$Session{user}{email}"},
        "session": {"tag": "user-session", "token": "issued below"},
    },
}


def seed(name: str) -> dict[str, Any]:
    data = dict(SEED[name])
    if "session" in data:  # the seed's 'eyJhbGciOi...' stands for a real token
        data["session"] = {
            "tag": "user-session",
            "token": token({"user": {"id": "user_123", "email": "john@example.com"}}),
        }
    return data


@pytest.mark.parametrize(
    ("name", "status", "run_at", "next_ms"),
    [
        pytest.param("quick-example", JobStatus.QUEUED, NOW, None),
        pytest.param("run-immediately", JobStatus.QUEUED, NOW, None),
        pytest.param("specific-time", JobStatus.QUEUED, NOW, None),  # 2024-01-01 is past: now
        pytest.param("cron", JobStatus.SCHEDULED, None, ms("2024-06-01T13:00:00")),
        pytest.param("interval", JobStatus.SCHEDULED, NOW, NOW + DAY),
        pytest.param("limited", JobStatus.SCHEDULED, NOW, NOW + WEEK),
        pytest.param("until-a-date", JobStatus.SCHEDULED, NOW, NOW + DAY),
        pytest.param("session", JobStatus.QUEUED, NOW, None),
    ],
)
def test_seed_examples_plan(name: str, status: JobStatus, run_at: int | None, next_ms: int | None) -> None:
    job = plan(seed(name))
    assert job.status == status
    assert job.nominal_ms == run_at
    assert job.run_id == (None if run_at is None else f"{JOB}:{run_at}")
    assert job.next_run_ms == next_ms
    assert job.recurring is ("repeat" in SEED[name])
    assert (job.spec.product_tag, job.spec.event) == (SEED[name]["product_tag"], SEED[name]["event"])


def test_seed_session_example_stores_no_session_values() -> None:
    job = plan(seed("session"))
    assert "john@example.com" not in str(job.spec.input) and "user_123" not in str(job.spec.input)
    assert job.spec.sealed and job.spec.input_digest


def test_seed_until_a_date_example_is_refused_once_the_date_is_past() -> None:
    refused(
        seed("until-a-date"),
        "repeat.endDate",
        "2025-12-31T23:59:59",
        "already past",
        now=ms("2026-11-27T00:00:00"),
    )


def test_seed_until_a_date_example_last_day() -> None:
    job = plan(seed("until-a-date"), now=ms("2025-12-31T12:00:00"))
    assert (job.status, job.runs_done, job.next_run_ms) == (JobStatus.COMPLETED, 1, None)
