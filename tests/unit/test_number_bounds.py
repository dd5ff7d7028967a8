"""Every numeric field has an upper bound: huge or odd numbers are refused by name, never crash.

A number past CPython's 4,300-digit limit cannot even be printed, and one past 64 bits cannot be
stored for other readers; each field refuses them with a JobValidationError naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ductape_jobs.errors import JobValidationError, shown
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import MAX_INT
from ductape_jobs.timing import MAX_MS

NOW = 1_717_200_000_000  # 2024-06-01T00:00:00Z
BASE: dict[str, Any] = {"env": "dev", "product_tag": "p", "event": "e"}
EVERY = {"every": 60_000}

huge_int = st.integers(min_value=18, max_value=6_000).flatmap(
    lambda k: st.sampled_from([10**k, -(10**k), 10**k + 1, 2 ** (k * 3), -(2 ** (k * 3)) + 1])
)
edge_int = st.sampled_from(
    [
        0,
        1,
        -1,
        25,
        26,
        999,
        1_000,
        2**31,
        2**53 + 1,
        MAX_MS,
        MAX_MS + 1,
        MAX_INT,
        MAX_INT + 1,
        2**64,
        -(2**63),
    ]
)
odd_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.5, 1e19, 9.3e18, 2.0**63]),
)
odd = st.one_of(
    huge_int,
    edge_int,
    st.integers(),
    odd_float,
    st.booleans(),
    st.sampled_from(
        [Decimal("1e5000"), Decimal("NaN"), Fraction(1, 3), 1 + 2j, "1" * 5000, "1e5000", "Infinity"]
    ),
)

# field name in errors -> how to put a value into a request
FIELDS = {
    "retries": lambda v: {**BASE, "retries": v},
    "start_at": lambda v: {**BASE, "start_at": v},
    "repeat.every": lambda v: {**BASE, "repeat": {"every": v}},
    "repeat.limit": lambda v: {**BASE, "repeat": {**EVERY, "limit": v}},
    "repeat.endDate": lambda v: {**BASE, "repeat": {**EVERY, "endDate": v}},
    "repeat.catchup_ms": lambda v: {**BASE, "repeat": {**EVERY, "misfire": "run_all", "catchup_ms": v}},
}


def schedule_plan(request: dict[str, Any]) -> str:
    """What schedule() checks before writing, then the JSON it would store."""
    plan = plan_job(JobRequest.parse(request), Settings(), Sessions({}), NOW, "job1")
    return json.dumps(dataclasses.asdict(plan.spec), separators=(",", ":"))


@pytest.mark.parametrize("field", list(FIELDS))
@settings(max_examples=150, deadline=None)
@given(value=odd)
def test_each_numeric_field_takes_or_refuses_any_number_by_name(field: str, value: Any) -> None:
    try:
        stored = schedule_plan(FIELDS[field](value))
    except JobValidationError as exc:
        assert exc.field == field, (field, str(exc))
        assert len(str(exc)) < 600  # named by its size, not spelled out
        return
    assert len(stored) < 2_000  # accepted: a bounded number, stored as JSON


@pytest.mark.parametrize("field", list(FIELDS))
def test_the_issues_ten_to_the_5000_is_refused_by_name(field: str) -> None:
    with pytest.raises(JobValidationError) as refused:
        schedule_plan(FIELDS[field](10**5000))
    assert refused.value.field == field
    assert "<a number of about 5001 digits>" in str(refused.value)


@pytest.mark.parametrize(
    ("field", "largest"),
    [("repeat.every", MAX_INT), ("repeat.limit", MAX_INT), ("repeat.catchup_ms", MAX_INT), ("retries", 25),
     ("start_at", MAX_MS), ("repeat.endDate", MAX_MS)],
)  # fmt: skip
def test_the_documented_bounds(field: str, largest: int) -> None:
    # An interval past the year 9999 makes sense only for a single run.
    build = (
        (lambda v: {**BASE, "repeat": {"every": v, "limit": 1}}) if field == "repeat.every" else FIELDS[field]
    )
    schedule_plan(build(largest))
    with pytest.raises(JobValidationError) as refused:
        schedule_plan(build(largest + 1))
    assert refused.value.field == field


def test_huge_numbers_are_shown_by_size() -> None:
    assert shown(10**5000) == "<a number of about 5001 digits>"
    assert shown(-(10**100)) == "-<a number of about 101 digits>"
    assert shown(2**63) == repr(2**63)
    assert shown("x" * 200).endswith("...") and len(shown("x" * 200)) == 80
