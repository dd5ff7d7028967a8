"""Unit tests for request validation (docs/design.md sections 3 and 4) and for Settings.

Pure: no Redis. Each refusal is one JobValidationError naming the field, showing the bad value
and saying what to do instead; each acceptance checks the value the model converted it to.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ductape_jobs.errors import DuctapeError, JobValidationError, SessionError
from ductape_jobs.models import JobRequest, Repeat
from ductape_jobs.settings import CacheConfig, Settings

# The seed's "Run immediately" example, in Python spelling.
BASE: dict[str, Any] = {
    "env": "prd",
    "product_tag": "billing",
    "event": "process_payment",
    "start_at": 0,
    "retries": 3,
    "input": {"orderId": "order_456", "amount": 99.99},
}
JAN_1_2024_S = 1_704_067_200  # 2024-01-01T00:00:00Z in Unix seconds
JAN_1_2024_MS = JAN_1_2024_S * 1000
INSTANT_FIX = "Unix seconds (below 1e11)"
SLUG_FIX = "letters, digits"
CRON_FIX = "minute hour day-of-month month day-of-week"
TZ_FIX = "'America/New_York'"


def request(**overrides: Any) -> dict[str, Any]:
    """BASE with some fields replaced; a value of ... removes the field."""
    data = {**BASE, **overrides}
    return {k: v for k, v in data.items() if v is not ...}


def refused(data: object) -> JobValidationError:
    """Parse ``data``, expecting exactly one JobValidationError and nothing chained to it."""
    with pytest.raises(JobValidationError) as caught:
        JobRequest.parse(data)
    err = caught.value
    assert isinstance(err, ValueError) and isinstance(err, DuctapeError)
    # One error, not a pydantic dump: no cause or context is shown under it.
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__
    text = str(err)
    assert text.startswith(f"{err.field}: ")
    assert "\n" not in text
    assert "pydantic" not in text and "Traceback" not in text and "For further information" not in text
    return err


def assert_refused(data: object, field: str, *shown: str) -> JobValidationError:
    """Refused, naming ``field``, with every string of ``shown`` in the message."""
    err = refused(data)
    assert err.field == field, str(err)
    for part in shown:
        assert part in str(err), f"{part!r} missing from {str(err)!r}"
    return err


# -- start_at: the seconds-or-milliseconds rule, ISO strings, and what is refused ------------------


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        pytest.param(0, 0, id="zero-means-now"),
        pytest.param(JAN_1_2024_S, JAN_1_2024_MS, id="seconds"),
        pytest.param(JAN_1_2024_MS, JAN_1_2024_MS, id="milliseconds"),
        pytest.param(JAN_1_2024_S + 0.25, JAN_1_2024_MS + 250, id="fractional-seconds"),
        pytest.param(float(JAN_1_2024_MS), JAN_1_2024_MS, id="float-milliseconds"),
        pytest.param(99_999_999_999, 99_999_999_999_000, id="largest-seconds-year-5138"),
        pytest.param(100_000_000_000, 100_000_000_000, id="smallest-ms-year-1973"),
        pytest.param(1, 1000, id="one-second-after-epoch"),
        pytest.param("2024-01-01T00:00:00Z", JAN_1_2024_MS, id="iso-z"),
        pytest.param("2024-01-01T00:00:00z", JAN_1_2024_MS, id="iso-lower-z"),
        pytest.param("2024-01-01T00:00:00", JAN_1_2024_MS, id="iso-naive-is-utc"),
        pytest.param("2024-01-01", JAN_1_2024_MS, id="iso-date-is-utc-midnight"),
        pytest.param("2024-01-01T01:00:00+01:00", JAN_1_2024_MS, id="iso-offset"),
        pytest.param("2023-12-31T19:00:00-05:00", JAN_1_2024_MS, id="iso-negative-offset"),
        pytest.param("2024-01-01T00:00:00.123Z", JAN_1_2024_MS + 123, id="iso-millis"),
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), JAN_1_2024_MS, id="aware-datetime"),
        pytest.param(datetime(2024, 1, 1), JAN_1_2024_MS, id="naive-datetime-is-utc"),  # noqa: DTZ001
        pytest.param(
            datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=9))), JAN_1_2024_MS, id="tokyo-datetime"
        ),
    ],
)
def test_start_at_is_read_as_epoch_ms(value: object, expected_ms: int) -> None:
    assert JobRequest.parse(request(start_at=value)).start_ms == expected_ms


@pytest.fixture
def host_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with the process time zone set away from UTC, so a local-time reading would show."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("host_in_tokyo")
@pytest.mark.parametrize(
    "value",
    ["2024-01-01T00:00:00", "2024-01-01", datetime(2024, 1, 1)],  # noqa: DTZ001
)
def test_naive_times_are_utc_whatever_the_host_zone(value: object) -> None:
    assert time.localtime(0).tm_hour == 9  # the fixture took effect
    assert JobRequest.parse(request(start_at=value)).start_ms == JAN_1_2024_MS
    end = JobRequest.parse(request(repeat={"every": 60_000, "endDate": value})).repeat
    assert end is not None and end.end_ms == JAN_1_2024_MS


def test_start_at_defaults_to_now() -> None:
    assert JobRequest.parse(request(start_at=...)).start_ms == 0


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(-1, "-1", id="negative"),
        pytest.param(-0.5, "-0.5", id="negative-fraction"),
        pytest.param(-JAN_1_2024_MS, str(-JAN_1_2024_MS), id="negative-ms"),
        pytest.param(math.nan, "nan", id="nan"),
        pytest.param(math.inf, "inf", id="inf"),
        pytest.param(-math.inf, "-inf", id="minus-inf"),
        pytest.param(True, "True", id="true"),
        pytest.param(False, "False", id="false"),
        pytest.param("tomorrow", "'tomorrow'", id="words"),
        pytest.param("", "''", id="empty-string"),
        pytest.param("1704067200", "'1704067200'", id="number-as-string"),
        pytest.param("2024-13-01T00:00:00Z", "'2024-13-01T00:00:00Z'", id="month-13"),
        pytest.param("1969-12-31T23:59:59Z", "'1969-12-31T23:59:59Z'", id="before-1970"),
        pytest.param(None, "None", id="none"),
        pytest.param([JAN_1_2024_S], "[1704067200]", id="list"),
    ],
)
def test_bad_start_at_is_refused(value: object, shown: str) -> None:
    assert_refused(request(start_at=value), "start_at", shown, INSTANT_FIX)


def test_start_at_after_year_9999_is_refused() -> None:
    assert_refused(request(start_at=10**20), "start_at", str(10**20), "after the year 9999", "milliseconds")


# -- retries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 3, 25])
def test_retries_in_range_are_kept(value: int) -> None:
    assert JobRequest.parse(request(retries=value)).retries == value


def test_retries_default_to_zero() -> None:
    assert JobRequest.parse(request(retries=...)).retries == 0


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(-1, "-1", id="negative"),
        pytest.param(26, "26", id="above-25"),
        pytest.param(1000, "1000", id="far-above"),
        pytest.param(True, "True", id="true"),
        pytest.param(False, "False", id="false"),
        pytest.param(2.0, "2.0", id="whole-float"),
        pytest.param(2.5, "2.5", id="fraction"),
        pytest.param(math.nan, "nan", id="nan"),
        pytest.param("3", "'3'", id="string"),
        pytest.param(None, "None", id="none"),
    ],
)
def test_bad_retries_are_refused(value: object, shown: str) -> None:
    assert_refused(request(retries=value), "retries", f"got {shown}", "0..25")


# -- timeout (beyond the seed) ------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 30, 86_400])
def test_timeouts_in_range_are_kept(value: int) -> None:
    assert JobRequest.parse(request(timeout=value)).timeout == value


def test_timeout_defaults_to_the_settings() -> None:
    assert JobRequest.parse(request()).timeout is None  # planning puts DUCTAPE_JOB_TIMEOUT_S in


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(-5, "-5", id="negative"),
        pytest.param(86_401, "86401", id="above-a-day"),
        pytest.param(10**5000, "<a number of about 5001 digits>", id="huge"),
        pytest.param(True, "True", id="true"),
        pytest.param(1.5, "1.5", id="fraction"),
        pytest.param(math.inf, "inf", id="inf"),
        pytest.param("10", "'10'", id="string"),
    ],
)
def test_bad_timeouts_are_refused(value: object, shown: str) -> None:
    assert_refused(request(timeout=value), "timeout", f"got {shown}", "seconds 1..86400")


# -- env, product_tag, event, app, cache: slugs ---------------------------------------------------

BAD_SLUGS = [
    pytest.param("", "''", id="empty"),
    pytest.param(" ", "' '", id="space"),
    pytest.param("my app", "'my app'", id="inner-space"),
    pytest.param(" billing", "' billing'", id="leading-space"),
    pytest.param("billing\n", "'billing\\n'", id="newline"),
    pytest.param("x'; DROP TABLE jobs;--", "DROP TABLE jobs", id="sql-injection"),
    pytest.param("$(reboot)", "'$(reboot)'", id="shell-injection"),
    pytest.param("a:b", "'a:b'", id="redis-key-separator"),
    pytest.param("a*", "'a*'", id="redis-glob"),
    pytest.param("{x}", "'{x}'", id="braces"),
    pytest.param("../etc/passwd", "'../etc/passwd'", id="path"),
    pytest.param("-dash-first", "'-dash-first'", id="dash-first"),
    pytest.param("caf\u00e9", "'caf\u00e9'", id="non-ascii"),
    pytest.param("x" * 129, "'xxxx", id="too-long"),
]


@pytest.mark.parametrize("field", ["env", "product_tag", "event", "app", "cache"])
@pytest.mark.parametrize(("value", "shown"), BAD_SLUGS)
def test_bad_slugs_are_refused(field: str, value: str, shown: str) -> None:
    assert_refused(request(**{field: value}), field, shown, SLUG_FIX)


@pytest.mark.parametrize("field", ["env", "product_tag", "event"])
@pytest.mark.parametrize("value", [1, None, ["prd"], {"x": 1}])
def test_slug_fields_must_be_strings(field: str, value: object) -> None:
    assert_refused(request(**{field: value}), field, "valid string", f"got {value!r}")


@pytest.mark.parametrize("value", ["prd", "my-app", "a", "v1.2_beta", "X" * 128])
def test_good_slugs_are_kept(value: str) -> None:
    req = JobRequest.parse(request(env=value, product_tag=value, event=value, app=value, cache=value))
    assert (req.env, req.product_tag, req.event, req.app, req.cache) == (value,) * 5


@pytest.mark.parametrize("field", ["env", "product_tag", "event"])
def test_required_fields(field: str) -> None:
    assert_refused(request(**{field: ...}), field, "required")


def test_product_is_an_alias_of_product_tag() -> None:
    req = JobRequest.parse(request(product_tag=..., product="billing"))
    assert req.product_tag == "billing"


def test_product_alias_is_validated_like_product_tag() -> None:
    # The error names the key the caller wrote.
    assert_refused(request(product_tag=..., product="my app"), "product", "'my app'", SLUG_FIX)


def test_product_and_product_tag_together_are_refused() -> None:
    assert_refused(request(product="other"), "product_tag", "'billing'", "'other'", "keep one")


def test_missing_product_tag_is_named_by_its_seed_name() -> None:
    assert_refused(request(product_tag=...), "product_tag", "required")


# -- unknown fields (typos) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "suggestion"),
    [
        pytest.param(request(retires=3), "retires", "'retries'", id="retires"),
        pytest.param(request(startAt=0), "startAt", "'start_at'", id="startAt"),
        pytest.param(request(product_tags="x"), "product_tags", "'product_tag'", id="product_tags"),
        pytest.param(request(inputs={}), "inputs", "'input'", id="inputs"),
        pytest.param(request(Env="prd"), "Env", "'env'", id="Env"),
        pytest.param(request(repeat={"evry": 60_000}), "repeat.evry", "'every'", id="repeat.evry"),
        pytest.param(
            request(repeat={"every": 60_000, "enddate": "2030-01-01"}),
            "repeat.enddate",
            "'endDate'",
            id="repeat.enddate",
        ),
        pytest.param(
            request(repeat={"cron": "0 9 * * *", "timezone": "UTC"}),
            "repeat.timezone",
            "",
            id="repeat.timezone",
        ),
        pytest.param(
            request(session={"tag": "s", "token": "t", "tokn": "t"}),
            "session.tokn",
            "'token'",
            id="session.tokn",
        ),
    ],
)
def test_unknown_fields_are_refused_with_the_known_ones(
    data: dict[str, Any], field: str, suggestion: str
) -> None:
    err = assert_refused(data, field, "is not a known field", "known: ")
    assert suggestion in str(err)


def test_unknown_field_lists_the_seed_names() -> None:
    err = refused(request(colour="red"))
    for name in (
        "env",
        "product_tag",
        "event",
        "start_at",
        "retries",
        "input",
        "app",
        "cache",
        "session",
        "repeat",
    ):
        assert name in str(err)


# -- input, app, cache, session: shapes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param([1, 2], "[1, 2]", id="list"),
        pytest.param("x", "'x'", id="string"),
        pytest.param(None, "None", id="none"),
        pytest.param(5, "5", id="number"),
        pytest.param({1: "a"}, "1", id="int-key"),
    ],
)
def test_input_must_be_an_object(value: object, shown: str) -> None:
    err = refused(request(input=value))
    assert err.field.startswith("input")
    assert f"got {shown}" in str(err)


def test_input_may_be_empty_and_defaults_to_empty() -> None:
    assert JobRequest.parse(request(input={})).input == {}
    assert JobRequest.parse(request(input=...)).input == {}


def test_app_and_cache_are_optional() -> None:
    req = JobRequest.parse(BASE)
    assert (req.app, req.cache, req.session, req.repeat) == (None, None, None, None)


@pytest.mark.parametrize(
    ("session", "field", "shown"),
    [
        pytest.param({"tag": "user-session"}, "session.token", "required", id="no-token"),
        pytest.param({"token": "abc"}, "session.tag", "required", id="no-tag"),
        pytest.param({"tag": "", "token": "abc"}, "session.tag", "at least 1", id="empty-tag"),
        pytest.param("user-session:abc", "session", "<secret>", id="not-an-object"),
    ],
)
def test_bad_session_shapes_are_refused(session: object, field: str, shown: str) -> None:
    err = assert_refused(request(session=session), field, shown)
    assert isinstance(err, SessionError)


@pytest.mark.parametrize("token", [12345, ["s3cret-token-value"], {"jwt": "s3cret-token-value"}])
def test_a_misplaced_token_is_never_echoed(token: object) -> None:
    err = assert_refused(
        request(session={"tag": "user-session", "token": token}), "session.token", "<secret>"
    )
    assert "s3cret" not in str(err) and "12345" not in str(err)


def test_session_token_is_kept_secret_in_the_model() -> None:
    req = JobRequest.parse(request(session={"tag": "user-session", "token": "s3cret-token-value"}))
    assert req.session is not None
    assert req.session.token.get_secret_value() == "s3cret-token-value"
    assert "s3cret" not in repr(req) and "s3cret" not in req.model_dump_json()


# -- the request as a whole ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, [], ["env", "prd"], "env=prd", 5, ("prd",), b"{}"])
def test_a_request_must_be_a_dict(data: object) -> None:
    assert_refused(data, "request", "must be a dict", type(data).__name__)


def test_a_request_model_passes_through() -> None:
    req = JobRequest.parse(BASE)
    assert JobRequest.parse(req) is req


def test_many_bad_fields_give_one_error_naming_the_first() -> None:
    err = refused(request(env="", retries=99, start_at=-1, repeat={"every": 0}))
    assert err.field == "env"


def test_parsed_request_is_frozen() -> None:
    req = JobRequest.parse(BASE)
    with pytest.raises(ValueError, match="frozen"):
        req.retries = 5  # type: ignore[misc]


# -- repeat: cron ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "shown", "fix"),
    [
        pytest.param("nope", "'nope'", CRON_FIX, id="junk"),
        pytest.param("* * *", "'* * *'", CRON_FIX, id="three-fields"),
        pytest.param("0 9 * * * * *", "'0 9 * * * * *'", CRON_FIX, id="seven-fields"),
        pytest.param("61 * * * *", "'61 * * * *'", "not a valid cron", id="minute-61"),
        pytest.param("0 25 * * *", "'0 25 * * *'", "not a valid cron", id="hour-25"),
        pytest.param("0 9 * * mon-", "'0 9 * * mon-'", "not a valid cron", id="open-range"),
        pytest.param("0 0 31 2 *", "'0 0 31 2 *'", "never fires", id="31-february"),
        pytest.param("0 0 30 2 *", "'0 0 30 2 *'", "never fires", id="30-february"),
        pytest.param("0 0 31 4,6,9,11 *", "'0 0 31 4,6,9,11 *'", "never fires", id="31-in-30-day-months"),
        pytest.param("@daily", "'@daily'", "'0 0 * * *'", id="alias"),
        pytest.param("H * * * *", "'H * * * *'", "explicit numbers", id="hashed"),
        pytest.param(9, "9", CRON_FIX, id="not-a-string"),
    ],
)
def test_bad_cron_is_refused(cron: object, shown: str, fix: str) -> None:
    assert_refused(request(repeat={"cron": cron}), "repeat.cron", shown, fix)


@pytest.mark.parametrize(
    ("cron", "normalized"),
    [
        ("0 9 * * *", "0 9 * * *"),
        ("  0   9 * * *  ", "0 9 * * *"),
        ("30 0 9 * * *", "30 0 9 * * *"),  # 6 fields, seconds first
        ("0 0 29 2 *", "0 0 29 2 *"),  # leap days fire
        ("0 0 L * *", "0 0 L * *"),
        ("0 9 * * 1#2", "0 9 * * 1#2"),
        ("*/15 * * * *", "*/15 * * * *"),
    ],
)
def test_good_cron_is_kept(cron: str, normalized: str) -> None:
    req = JobRequest.parse(request(repeat={"cron": cron}))
    assert req.repeat is not None and req.repeat.cron == normalized


# -- repeat: tz ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "shown"),
    [
        pytest.param("Mars/Olympus_Mons", "'Mars/Olympus_Mons'", id="unknown"),
        pytest.param("EST5EDT-ish", "'EST5EDT-ish'", id="junk"),
        pytest.param("../../etc/passwd", "'../../etc/passwd'", id="path"),
        pytest.param("localtime", "'localtime'", id="host-zone"),
        pytest.param("+05:00", "'+05:00'", id="offset"),
        pytest.param(5, "5", id="not-a-string"),
    ],
)
def test_bad_tz_is_refused(tz: object, shown: str) -> None:
    assert_refused(request(repeat={"cron": "0 9 * * *", "tz": tz}), "repeat.tz", shown, TZ_FIX)


@pytest.mark.parametrize("tz", ["America/New_York", "Europe/London", "Asia/Kolkata", "UTC"])
def test_good_tz_is_kept(tz: str) -> None:
    req = JobRequest.parse(request(repeat={"cron": "0 9 * * *", "tz": tz}))
    assert req.repeat is not None and req.repeat.to_rule().tz == tz


def test_tz_defaults_to_utc() -> None:
    req = JobRequest.parse(request(repeat={"cron": "0 9 * * *"}))
    assert req.repeat is not None and req.repeat.to_rule().tz == "UTC"


# -- repeat: exactly one of cron / every, tz only with cron ------------------------------------------


@pytest.mark.parametrize(
    ("repeat", "shown"),
    [
        pytest.param({"cron": "0 9 * * *", "every": 60_000}, "got both", id="both"),
        pytest.param({"limit": 3}, "got neither", id="limit-only"),
        pytest.param({"endDate": "2030-01-01T00:00:00Z"}, "got neither", id="end-only"),
        pytest.param({"tz": "UTC"}, "got neither", id="tz-only"),
        pytest.param(
            {"every": 60_000, "tz": "America/New_York"}, "'tz' applies to 'cron' only", id="tz-with-every"
        ),
    ],
)
def test_repeat_needs_exactly_one_rule(repeat: dict[str, Any], shown: str) -> None:
    assert_refused(request(repeat=repeat), "repeat", shown)


def test_both_message_names_the_fix() -> None:
    assert_refused(
        request(repeat={"cron": "0 9 * * *", "every": 60_000}), "repeat", "exactly one of 'cron' or 'every'"
    )


@pytest.mark.parametrize(
    "repeat",
    [
        pytest.param({}, id="empty"),
        pytest.param(None, id="none"),
        pytest.param(
            {"cron": None, "every": None, "limit": None, "endDate": None, "tz": None}, id="all-none"
        ),
        pytest.param({"cron": "", "endDate": "", "tz": ""}, id="all-empty-strings"),
    ],
)
def test_empty_repeat_means_no_repeat(repeat: object) -> None:
    assert JobRequest.parse(request(repeat=repeat)).repeat is None


@pytest.mark.parametrize(
    "repeat",
    [
        pytest.param({"misfire": "run_all"}, id="misfire-only"),
        pytest.param({"misfire": "skip"}, id="default-misfire-only"),
        pytest.param({"catchup_ms": 60_000}, id="catchup-only"),
        pytest.param({"cron": None, "misfire": "run_all", "catchup_ms": 5_000}, id="policy-without-rule"),
    ],
)
def test_a_repeat_with_only_a_policy_is_refused_not_read_as_no_repeat(repeat: object) -> None:
    # A caller who wrote a misfire policy meant a recurring job: running it once would be silent.
    assert_refused(request(repeat=repeat), "repeat", "exactly one of 'cron' or 'every' (got neither)")


@pytest.mark.parametrize("repeat", ["daily", ["every", 60_000], 60_000])
def test_repeat_must_be_an_object(repeat: object) -> None:
    assert_refused(request(repeat=repeat), "repeat", f"got {repeat!r}")


# -- repeat: every and limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown", "fix"),
    [
        pytest.param(0, "0", "positive interval in milliseconds", id="zero"),
        pytest.param(-1, "-1", "positive interval in milliseconds", id="minus-one"),
        pytest.param(-86_400_000, "-86400000", "positive interval in milliseconds", id="negative-day"),
        pytest.param(True, "True", "whole number", id="true"),
        pytest.param(1.5, "1.5", "whole number", id="fraction"),
        pytest.param(math.nan, "nan", "whole number", id="nan"),
        pytest.param(math.inf, "inf", "whole number", id="inf"),
        pytest.param("60000", "'60000'", "whole number", id="string"),
    ],
)
def test_bad_every_is_refused(value: object, shown: str, fix: str) -> None:
    assert_refused(request(repeat={"every": value}), "repeat.every", f"got {shown}", fix)


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (60_000, 60_000), (86_400_000.0, 86_400_000)])
def test_every_is_kept_in_ms(value: float, expected: int) -> None:
    req = JobRequest.parse(request(repeat={"every": value}))
    assert req.repeat is not None and req.repeat.every == expected
    assert isinstance(req.repeat.every, int) and req.repeat.to_rule().every_ms == expected


@pytest.mark.parametrize(
    ("value", "shown", "fix"),
    [
        pytest.param(0, "0", "at least 1", id="zero"),
        pytest.param(-1, "-1", "at least 1", id="negative"),
        pytest.param(True, "True", "whole number", id="true"),
        pytest.param(1.5, "1.5", "whole number", id="fraction"),
        pytest.param("4", "'4'", "whole number", id="string"),
        pytest.param(math.nan, "nan", "whole number", id="nan"),
    ],
)
def test_bad_limit_is_refused(value: object, shown: str, fix: str) -> None:
    assert_refused(request(repeat={"every": 60_000, "limit": value}), "repeat.limit", f"got {shown}", fix)


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (4, 4), (4.0, 4)])
def test_limit_is_kept(value: float, expected: int) -> None:
    req = JobRequest.parse(request(repeat={"every": 60_000, "limit": value}))
    assert req.repeat is not None and req.repeat.to_rule().limit == expected


# -- repeat: endDate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        pytest.param(JAN_1_2024_S, JAN_1_2024_MS, id="seconds"),
        pytest.param(JAN_1_2024_MS, JAN_1_2024_MS, id="milliseconds"),
        pytest.param("2024-01-01T00:00:00Z", JAN_1_2024_MS, id="iso-z"),
        pytest.param("2024-01-01T00:00:00", JAN_1_2024_MS, id="iso-naive-is-utc"),
        pytest.param("2025-12-31T23:59:59Z", 1_767_225_599_000, id="seed-end-of-year"),
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), JAN_1_2024_MS, id="datetime"),
    ],
)
def test_end_date_follows_the_start_at_rule(value: object, expected_ms: int) -> None:
    req = JobRequest.parse(request(repeat={"every": 60_000, "endDate": value}))
    assert req.repeat is not None and req.repeat.end_ms == expected_ms
    assert req.repeat.to_rule().end_ms == expected_ms


def test_end_date_accepts_the_python_spelling() -> None:
    req = JobRequest.parse(request(repeat={"every": 60_000, "end_date": JAN_1_2024_S}))
    assert req.repeat is not None and req.repeat.end_ms == JAN_1_2024_MS


def test_end_date_spelled_both_ways_is_refused() -> None:
    data = request(repeat={"every": 60_000, "endDate": JAN_1_2024_S, "end_date": JAN_1_2024_MS})
    assert_refused(data, "repeat.endDate", "keep one", str(JAN_1_2024_S))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("soon", "'soon'", id="words"),
        pytest.param(-5, "-5", id="negative"),
        pytest.param(True, "True", id="bool"),
        pytest.param(math.nan, "nan", id="nan"),
        pytest.param("2025-02-30T00:00:00Z", "'2025-02-30T00:00:00Z'", id="no-such-day"),
        pytest.param([2030], "[2030]", id="list"),
    ],
)
def test_bad_end_date_is_refused(value: object, shown: str) -> None:
    assert_refused(request(repeat={"every": 60_000, "endDate": value}), "repeat.endDate", shown, INSTANT_FIX)


# -- repeat: the options beyond the seed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("repeat", "field", "shown"),
    [
        pytest.param({"every": 60_000, "misfire": "never"}, "repeat.misfire", "'never'", id="misfire"),
        pytest.param({"every": 60_000, "catchup_ms": -1}, "repeat.catchup_ms", "-1", id="catchup"),
    ],
)
def test_bad_misfire_options_are_refused(repeat: dict[str, Any], field: str, shown: str) -> None:
    assert_refused(request(repeat=repeat), field, f"got {shown}")


def test_repeat_model_builds_the_rule() -> None:
    repeat = Repeat.model_validate(
        {"cron": "0 9 * * *", "tz": "America/New_York", "limit": 4, "endDate": "2030-01-01T00:00:00Z"}
    )
    rule = repeat.to_rule()
    assert (rule.cron, rule.tz, rule.every_ms, rule.limit, rule.misfire) == (
        "0 9 * * *",
        "America/New_York",
        None,
        4,
        "skip",
    )
    assert rule.end_ms == 1_893_456_000_000


# -- Settings ---------------------------------------------------------------------------------------

PASSWORD = "hunter2-Pa55w0rd"
SECRET_URL = f"redis://default:{PASSWORD}@redis.internal:6380/2"


def test_settings_repr_hides_the_redis_password() -> None:
    settings = Settings.from_env({"REDIS_URL": SECRET_URL})
    assert settings.url == SECRET_URL  # kept, only hidden
    for text in (
        repr(settings),
        str(settings),
        f"{settings}",
        f"{settings!r}",
        str(dataclasses.asdict(settings)),
        repr(dataclasses.asdict(settings)),
        repr(settings.redis_url),
    ):
        assert PASSWORD not in text, text


def test_settings_built_directly_hide_the_password_too() -> None:
    settings = Settings(redis_url=SECRET_URL)
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


def test_session_secrets_are_not_in_the_settings_repr() -> None:
    settings = Settings(sessions={"user-session": {"secret": PASSWORD, "expiry_s": 60}})
    assert PASSWORD not in repr(settings)


def test_settings_read_the_environment() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": SECRET_URL,
            "DUCTAPE_ENVS": "dev, qa ,prd",
            "DUCTAPE_WORKER_ENVS": "qa",
            "DUCTAPE_CACHES": '{"short": {"ttl_ms": 60000}}',
            "DUCTAPE_MIN_EVERY_MS": "60000",
            "DUCTAPE_MAX_INPUT_BYTES": "1024",
            "DUCTAPE_REQUIRE_HANDLER": "false",
            "UNRELATED": "x",
        }
    )
    assert settings.envs == ("dev", "qa", "prd")
    assert settings.worker_envs == ("qa",)
    assert settings.caches["short"].ttl_ms == 60_000
    assert (settings.min_every_ms, settings.max_input_bytes, settings.require_handler) == (
        60_000,
        1024,
        False,
    )


@pytest.mark.parametrize(
    ("variables", "field", "shown"),
    [
        pytest.param({"DUCTAPE_HORIZON_MS": "soon"}, "horizon_ms", "'soon'", id="not-a-number"),
        pytest.param({"DUCTAPE_HORIZON_MS": "5"}, "horizon_ms", "1000", id="too-small"),
        pytest.param({"DUCTAPE_REQUIRE_HANDLER": "nah"}, "require_handler", "'nah'", id="not-a-bool"),
        pytest.param({"DUCTAPE_KEY_PREFIX": "a b"}, "key_prefix", "'a b'", id="prefix-with-space"),
        pytest.param({"DUCTAPE_MAX_INPUT_BYTES": "1"}, "max_input_bytes", "'1'", id="input-bytes"),
        pytest.param({"DUCTAPE_MAX_INPUT_DEPTH": "0"}, "max_input_depth", "'0'", id="input-depth"),
        pytest.param({"DUCTAPE_MIN_EVERY_MS": "0"}, "min_every_ms", "'0'", id="min-every"),
        pytest.param({"DUCTAPE_ENVS": ""}, "envs", "at least one env", id="no-envs"),
        pytest.param({"DUCTAPE_ENVS": " , "}, "envs", "at least one env", id="blank-envs"),
        pytest.param({"DUCTAPE_ENVS": "prd,my env"}, "envs", "'my env'", id="env-with-space"),
        pytest.param({"DUCTAPE_WORKER_ENVS": "qa"}, "worker_envs", "'qa'", id="worker-env-not-configured"),
        pytest.param({"DUCTAPE_CACHES": "{bad"}, "caches", "JSON object", id="caches-not-json"),
        pytest.param({"DUCTAPE_CACHES": "[1]"}, "caches", "[1]", id="caches-not-object"),
        pytest.param({"DUCTAPE_CACHES": '{"x": {"ttl_ms": 0}}'}, "caches", "0", id="cache-ttl-zero"),
        pytest.param({"DUCTAPE_SESSIONS": "{" + PASSWORD}, "sessions", "JSON object", id="sessions-not-json"),
        pytest.param({"DUCTAPE_SESSIONS": f'["{PASSWORD}"]'}, "sessions", "***", id="sessions-not-object"),
    ],
)
def test_bad_environment_values_name_the_variable(variables: dict[str, str], field: str, shown: str) -> None:
    with pytest.raises(JobValidationError) as caught:
        Settings.from_env({"REDIS_URL": SECRET_URL, **variables})
    err = caught.value
    assert err.field.startswith(f"settings.{field}"), str(err)
    variable = next(iter(variables))
    assert variable in str(err)
    assert shown in str(err)
    for text in (str(err), repr(err), repr(err.args)):
        assert PASSWORD not in text
    assert err.__cause__ is None and err.__suppress_context__


def test_settings_refuse_an_unknown_override_and_recheck_a_replaced_value() -> None:
    with pytest.raises(JobValidationError, match=r"\['cachez'\] are not settings") as caught:
        Settings.from_env({}, cachez={})
    assert "known: redis_url" in str(caught.value)
    settings = Settings.from_env({"REDIS_URL": SECRET_URL})
    with pytest.raises(JobValidationError, match="fix DUCTAPE_SHARDS"):
        settings.replace(shards=0)
    with pytest.raises(JobValidationError, match="fix DUCTAPE_ENVS"):
        Settings(envs=())
    assert settings.replace(shards=4).shards == 4 and settings.replace(shards=4).url == SECRET_URL


def test_settings_read_values_as_pydantic_did_and_refuse_what_it_refused() -> None:
    env = {
        "REDIS_URL": SECRET_URL,
        "DUCTAPE_HORIZON_MS": " 5000.0 ",  # a whole number written as a float
        "DUCTAPE_CACHES": '{"short": {"ttl_ms": "60000"}}',
        "DUCTAPE_REQUIRE_HANDLER": "No",
    }
    settings = Settings.from_env(env, caches=None)  # an override of None is no override
    assert (settings.horizon_ms, settings.caches["short"].ttl_ms, settings.require_handler) == (
        5_000,
        60_000,
        False,
    )
    for variables, fix in [
        (
            {"DUCTAPE_KEY_PREFIX": "ductape\n"},
            "DUCTAPE_KEY_PREFIX",
        ),  # no trailing newline past the pattern's $
        ({"DUCTAPE_ENVS": "dev\n"}, None),  # blank-stripped: fine
        ({"DUCTAPE_HORIZON_MS": "5000.5"}, "DUCTAPE_HORIZON_MS"),
        ({"DUCTAPE_HORIZON_MS": "inf"}, "DUCTAPE_HORIZON_MS"),
        ({"DUCTAPE_CACHES": '{"x": {"ttl_ms": 1.5}}'}, "DUCTAPE_CACHES"),
    ]:
        if fix is None:
            Settings.from_env({**env, **variables})
            continue
        with pytest.raises(JobValidationError, match=f"fix {fix}"):
            Settings.from_env({**env, **variables})
    with pytest.raises(JobValidationError, match="fix DUCTAPE_HORIZON_MS"):
        Settings(horizon_ms=float("inf"))  # type: ignore[arg-type]
    with pytest.raises(JobValidationError, match="fix DUCTAPE_CACHES"):
        Settings(caches={"x": CacheConfig(0)})
