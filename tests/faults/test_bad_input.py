"""Thousands of malformed requests through ``schedule()``: each refused with our error, nothing written.

Every request starts valid and gets one to three corruptions, each of which alone makes it
invalid (wrong types, out-of-range numbers, huge or deep input, bad cron / tz / timestamps,
text that is not valid Unicode, injection-looking tags, unknown fields). Anything but our error
type escaping ``schedule()`` is a bug, and so is any key left under the deployment's prefix.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ductape_jobs import Ductape, JobValidationError
from tests.faults.conftest import Report

pytestmark = pytest.mark.faults

Request = dict[str, Any]
Corruption = Callable[[Request], Any]

VALID: Request = {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}}
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
INJECTION = [
    "a b",
    "x:*",
    "*",
    "../",
    "../../etc/passwd",
    "'; DROP TABLE jobs;--",
    "\x00",
    "tests\x00",
    "x\r\nSET a b",
    "t:job:1",
    "{tests}",
    "ductape:*",
    "$(rm -rf /)",
    "`id`",
    "<script>alert(1)</script>",
    "%s%n",
    "${jndi:ldap://x}",
    "é",
    "日本語",
    "\u202etxt",
    "\ud800",
    "a\ud800b",
    "",
    " ",
    "-lead",
    ".dot",
    "_under",
    "a" * 129,
    "tests/echo",
    "a\\b",
    "echo\n",
    "\techo",
    "\uff45\uff43\uff48\uff4f",
    "🙂",
]
MAX_MS = 253_402_300_799_999  # the last instant a datetime holds


def not_slug(text: str) -> bool:
    return SLUG.fullmatch(text) is None


def not_iso(text: str) -> bool:
    """Whether ``text`` is no ISO-8601 time (the stdlib decides what one is)."""
    stripped = text.strip()
    if stripped[-1:] in ("z", "Z"):
        stripped = stripped[:-1] + "+00:00"
    try:
        datetime.fromisoformat(stripped)
    except ValueError:
        return True
    return False


bad_text = st.one_of(st.sampled_from(INJECTION), st.text(max_size=150).filter(not_slug))
junk = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just(object()),
    st.just({1, 2}),
)
bad_tag = st.one_of(bad_text, junk)  # None is fine for the optional tags, so it is not here
bad_instant = st.one_of(
    st.booleans(),
    st.integers(max_value=-1),
    st.floats(max_value=-1e-3),
    st.sampled_from([math.nan, math.inf, -math.inf, MAX_MS + 1, 10**30, 1e300]),
    st.sampled_from(["", " ", "tomorrow", "now", "2024-13-01", "2024-02-30T00:00:00", "1e9", "0x10", "-1"]),
    st.text(max_size=40).filter(not_iso),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(max_size=8),
    st.just(object()),
)
bad_count = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True).filter(lambda f: not (math.isfinite(f) and f.is_integer() and f >= 1)),
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
bad_cron = st.one_of(
    st.sampled_from(
        [
            " ",
            "* * *",
            "* * * * * * *",
            "61 * * * *",
            "* 25 * * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "0 0 31 2 *",
            "0 0 30 2 *",
            "*/0 * * * *",
            "a b c d e",
            "@reboot",
            "* * * * * *\x00",
            "'; DROP",
            "../ * * * *",
            "1-0 * * * *",
            "60 0 0 1 1 *",
        ]
    ),
    st.text(min_size=1, max_size=30).filter(lambda s: len(s.split()) not in (5, 6)),  # '' means no repeat
    junk.filter(lambda v: v is not None),
)
bad_zone = st.one_of(
    st.sampled_from(
        ["Mars/Olympus", "UTC+25", "../etc/passwd", "America/New York", "utc/", "\x00", "Europe/"]
    ),
    st.text(min_size=1, max_size=30).filter(
        lambda s: any(c in s for c in " *:\x00?<>|\\") or s.startswith("/")
    ),
    junk.filter(lambda v: not isinstance(v, str)),
)


def deep(depth: int, as_list: bool) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if as_list else {"d": value}
    return value


bad_input = st.one_of(
    junk.filter(lambda v: not isinstance(v, dict)),
    st.text(max_size=20),
    st.none(),
    st.builds(lambda n: {"blob": "x" * (256 * 1024 + n)}, st.integers(min_value=0, max_value=4096)),
    st.builds(lambda n: {f"k{i}": "v" * 64 for i in range(n)}, st.integers(min_value=3_700, max_value=4_000)),
    st.builds(
        lambda d, lst: {"deep": deep(d, lst)}, st.integers(min_value=32, max_value=20_000), st.booleans()
    ),
    st.sampled_from(
        [
            {"x": {1, 2}},
            {"x": b"bytes"},
            {"x": object()},
            {"x": math.nan},
            {"x": -math.inf},
            {"x": 1 + 2j},
            {"x": datetime(2024, 1, 1, tzinfo=UTC)},
            {1: "int key"},
            {None: "none key"},
            {("t",): "tuple key"},
            {"x": [1, {"y": {2}}]},
            {"s": "\ud800"},
            {"\udfff": 1},
            {"x": ["ok", "a\udc80b"]},
            {"x": "$Session{user}{id}"},
        ]
    ),
)
bad_session = st.one_of(
    junk.filter(lambda v: not isinstance(v, dict)),
    st.text(max_size=10),
    st.builds(lambda t: {"tag": t}, st.text(max_size=10)),
    st.builds(lambda t: {"token": t}, st.text(max_size=10)),
    st.builds(lambda t: {"tag": "user-session", "token": t}, st.text(max_size=60)),
    st.builds(
        lambda t: {"tag": t, "token": "x.y.z"}, st.text(max_size=10).filter(lambda t: t != "user-session")
    ),
    st.builds(lambda v: {"tag": "user-session", "token": v}, junk),
    st.just({"tag": "user-session", "token": "user-session:e30.e30.e30", "extra": 1}),
)
every_rule = {"every": 5_000}
REPEAT_FIELDS = ("cron", "every", "limit", "endDate", "end_date", "tz", "misfire", "catchup_ms", "overlap")
bad_repeat = st.one_of(
    junk.filter(lambda v: not isinstance(v, dict) and v is not None),
    st.text(min_size=1, max_size=10),
    st.builds(lambda c: {"cron": c}, bad_cron),
    st.builds(lambda z: {"cron": "*/5 * * * *", "tz": z}, bad_zone),
    st.builds(lambda e: {"every": e}, st.one_of(st.integers(max_value=999), bad_count, st.text(max_size=6))),
    st.builds(lambda n: {**every_rule, "limit": n}, bad_count),
    st.builds(lambda t: {**every_rule, "endDate": t}, bad_instant.filter(lambda t: t != "")),  # '' means none
    st.builds(lambda t: {**every_rule, "endDate": t}, st.integers(min_value=1, max_value=10**9)),  # past
    st.builds(lambda z: {**every_rule, "tz": z}, st.sampled_from(["UTC", "Europe/Paris"])),  # tz needs cron
    st.just({"cron": "*/5 * * * *", "every": 5_000}),
    st.just({"limit": 3}),
    st.just({"tz": "UTC"}),
    st.builds(
        lambda k: {**every_rule, k: 1},
        st.text(min_size=1, max_size=10).filter(lambda k: k not in REPEAT_FIELDS),
    ),
    st.builds(lambda m: {**every_rule, "misfire": m}, st.one_of(bad_text, junk)),
    st.builds(lambda m: {**every_rule, "overlap": m}, st.one_of(bad_text, junk)),
    st.builds(
        lambda c: {**every_rule, "catchup_ms": c}, st.one_of(st.integers(max_value=-1), st.text(max_size=4))
    ),
)
known_fields = {
    "env",
    "product_tag",
    "product",
    "event",
    "start_at",
    "retries",
    "input",
    "app",
    "cache",
    "session",
    "repeat",
}


def corruption(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Corruption]:
    """Set ``field`` to one of ``values``."""
    return values.map(lambda v: lambda req: req.__setitem__(field, v))


corruptions = st.one_of(
    corruption("env", st.one_of(bad_tag, st.none(), st.sampled_from(["qa", "production", "DEV"]))),
    corruption("product_tag", st.one_of(bad_tag, st.none())),
    corruption("event", st.one_of(bad_tag, st.none())),
    corruption("app", bad_tag),
    corruption("cache", st.one_of(bad_tag, st.sampled_from(["nope", "long"]))),
    corruption("start_at", bad_instant),
    corruption(
        "retries",
        st.one_of(
            st.integers(max_value=-1), st.integers(min_value=26), st.sampled_from([1.5, 3.0, "3", True, None])
        ),
    ),
    corruption("input", bad_input),
    corruption("session", bad_session),
    corruption("repeat", bad_repeat),
    st.sampled_from(["env", "product_tag", "event"]).map(lambda f: lambda req: req.pop(f, None)),
    st.builds(
        lambda k, v: lambda req: req.__setitem__(k, v),
        st.text(min_size=1, max_size=12).filter(lambda k: k not in known_fields),
        st.integers(),
    ),
    st.just(lambda req: req.__setitem__("product", "tests")),  # product and product_tag both given
)
noise = st.dictionaries(
    st.text(max_size=8), st.one_of(st.text(max_size=30), st.integers(), st.none()), max_size=3
)
whole = st.one_of(
    st.lists(st.integers(), max_size=2), st.text(max_size=10), st.integers(), st.binary(max_size=5)
)


@st.composite
def malformed(draw: st.DrawFn) -> Any:
    """A request that is invalid for at least one reason."""
    if draw(st.integers(min_value=0, max_value=40)) == 0:
        return draw(whole)  # not a dict at all
    request: Request = {**VALID, "input": draw(noise)}
    if draw(st.booleans()):
        request["retries"] = draw(st.integers(min_value=0, max_value=25))
    for change in draw(st.lists(corruptions, min_size=1, max_size=3)):
        change(request)
    return request


def test_malformed_requests_are_refused_and_write_nothing(
    ductape: Ductape, r: redis.Redis, prefix: str, report: Report
):
    assert not ductape.settings.require_handler
    refused: Counter[str] = Counter()
    wrong: list[str] = []

    @settings(
        max_examples=2_000,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(malformed(), st.integers(min_value=0, max_value=9))
    def check(request: Any, batch: int) -> None:
        try:
            if batch == 0:  # one bad request in a batch: the good ones are not written either
                ductape.job.schedule_many([VALID, request, VALID])
            else:
                ductape.job.schedule(request)
        except JobValidationError as exc:
            field = exc.field.split(".")[0].split("[")[0]
            refused[field if field in known_fields | {"request", "requests"} else "unknown field"] += 1
            return
        except Exception as exc:
            wrong.append(f"{type(exc).__name__}: {exc!s:.200} for {request!r:.300}")
            raise
        raise AssertionError(f"accepted: {request!r:.300}")

    try:
        check()
    finally:
        left = sorted(k.decode() for k in r.scan_iter(match=f"{prefix}:*"))
        report(
            "8 malformed requests through schedule()",
            sum(refused.values()) + len(wrong),
            sum(refused.values()) + len(wrong),
            0,
            0,
            refused=sum(refused.values()),
            wrong_error_type=len(wrong),
            keys_left=len(left),
            by_field=dict(refused.most_common()),
        )
    assert not wrong
    assert left == []
    assert sum(refused.values()) >= 1_000
