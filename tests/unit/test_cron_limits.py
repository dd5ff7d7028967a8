"""Cron rules are bounded: their rate by DUCTAPE_MIN_EVERY_MS, their text by length, their cache by size."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from ductape_jobs import timing
from ductape_jobs.errors import JobValidationError
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.timing import MAX_CRON_CHARS, cron_min_gap_ms, validate_cron

NOW = 1_717_200_000_000  # 2024-06-01T00:00:00Z


@pytest.mark.parametrize(
    ("cron", "gap_s"),
    [
        ("* * * * * *", 1),
        ("*/10 * * * * *", 10),
        ("0,59 * * * * *", 1),  # 10:00:59 -> 10:01:00
        ("0,30 59 * * * *", 30),
        ("0 59 23 * * *", 86_400),
        ("0 0 0,23 * * *", 3_600),  # 23:00 -> 00:00 the next day
        ("* * * * *", 60),
        ("*/15 9-17 * * 1-5", 900),
        ("0 9 * * *", 86_400),
        ("0 0 1 * *", 86_400),  # a lower bound: days are not counted apart
        ("30 2 * * *", 86_400),
        ("0-59/20 59 23 * * *", 20),
        ("50 59 23 * * *", 86_400),
        ("0 0,45 * * * *", 900),  # :45 -> the next hour's :00
    ],
)
def test_the_shortest_gap_of_a_cron(cron: str, gap_s: int) -> None:
    assert cron_min_gap_ms(cron) == gap_s * 1000


values = st.lists(st.integers(0, 59), min_size=1, max_size=4, unique=True)
hours = st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True)


def field(items: list[int]) -> str:
    return ",".join(map(str, items))


@settings(max_examples=150, deadline=None)
@given(values, values, hours)
def test_the_gap_is_the_shortest_one_croniter_walks(
    seconds: list[int], minutes: list[int], hrs: list[int]
) -> None:
    cron = f"{field(seconds)} {field(minutes)} {field(hrs)} * * *"
    walk = croniter(cron, datetime(2024, 1, 1, tzinfo=UTC), second_at_beginning=True)
    runs = [walk.get_next(float) for _ in range(2 * len(seconds) * len(minutes) * len(hrs) + 1)]  # 2+ days
    assert cron_min_gap_ms(cron) == 1000 * min(b - a for a, b in itertools.pairwise(runs))


@settings(max_examples=60, deadline=None)
@given(values, values, hours, st.sampled_from(["1,15", "L", "*/2", "29"]), st.sampled_from(["*", "1-5", "0"]))
def test_with_days_skipped_the_gap_is_a_lower_bound(
    seconds: list[int], minutes: list[int], hrs: list[int], days: str, weekdays: str
) -> None:
    cron = f"{field(seconds)} {field(minutes)} {field(hrs)} {days} * {weekdays}"
    walk = croniter(cron, datetime(2024, 1, 1, tzinfo=UTC), second_at_beginning=True)
    runs = [walk.get_next(float) for _ in range(200)]
    assert cron_min_gap_ms(cron) <= 1000 * min(b - a for a, b in itertools.pairwise(runs))


def plan(cron: str, min_every_ms: int) -> None:
    request = JobRequest.parse({"env": "dev", "product_tag": "p", "event": "e", "repeat": {"cron": cron}})
    plan_job(request, Settings(min_every_ms=min_every_ms), Sessions({}), NOW, "job1")


@pytest.mark.parametrize(
    ("cron", "min_every_ms"),
    [("* * * * * *", 2_000), ("*/30 * * * * *", 60_000), ("* * * * *", 120_000), ("0,59 * * * * *", 1_001),
     ("0 0,23 * * *", 3_600_001)],
)  # fmt: skip
def test_a_cron_running_more_often_than_the_minimum_is_refused(cron: str, min_every_ms: int) -> None:
    with pytest.raises(JobValidationError, match=r"^repeat\.cron: ") as refused:
        plan(cron, min_every_ms)
    text = str(refused.value)
    assert f"below the minimum of {min_every_ms} ms" in text and "DUCTAPE_MIN_EVERY_MS" in text
    assert f"every {cron_min_gap_ms(cron)} ms" in text


@pytest.mark.parametrize(
    ("cron", "min_every_ms"),
    [("* * * * * *", 1_000), ("*/30 * * * * *", 30_000), ("* * * * *", 60_000), ("0 9 * * *", 86_400_000)],
)
def test_a_cron_at_the_minimum_is_accepted(cron: str, min_every_ms: int) -> None:
    plan(cron, min_every_ms)


def test_the_default_minimum_takes_every_valid_cron() -> None:
    plan("* * * * * *", Settings().min_every_ms)


def test_a_cron_longer_than_the_bound_is_refused_before_parsing() -> None:
    every_value = "0-59 0-59 0-23 1-31 1-12 0-6"
    listed = " ".join(
        ",".join(map(str, range(lo, hi + 1)))
        for lo, hi in ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
    )
    assert validate_cron(listed) == listed and len(listed) < MAX_CRON_CHARS  # every value, one by one
    assert validate_cron(every_value) == every_value
    for text in ("* * * * *" + " " * MAX_CRON_CHARS, "0," * 600 + "0 * * * *"):
        with pytest.raises(
            JobValidationError, match=rf"^repeat\.cron: .* characters long; .* at most {MAX_CRON_CHARS}"
        ):
            validate_cron(text)


def test_spacing_variants_share_one_cache_entry() -> None:
    timing._parse_cron.cache_clear()
    spaced = ["0 9 * * *", " 0  9 * * * ", "0\t9\n*  *   *", "\x0b0 9 * * *\x0c", "0 9 * * *" + " " * 900]
    assert {validate_cron(text) for text in spaced} == {"0 9 * * *"}
    assert timing._parse_cron.cache_info().currsize == 1


def retained_bytes(work: Callable[[], None]) -> int:
    """Memory still held after ``work`` (what it left in caches)."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        work()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_the_issues_200_one_megabyte_variants_leave_nothing_behind() -> None:
    def attack() -> None:
        for i in range(200):
            with pytest.raises(JobValidationError):
                validate_cron("0 9 * * *" + " " * (1_000_000 + i))

    timing._parse_cron.cache_clear()
    assert retained_bytes(attack) < 100_000


def test_the_cache_holds_at_most_512_crons_each_within_the_length_bound() -> None:
    timing._parse_cron.cache_clear()
    for second in range(60):
        for hour in range(12):
            validate_cron(f"{second} 0 {hour} * * *")
    assert timing._parse_cron.cache_info().currsize == 512  # 720 distinct crons parsed

    def longest() -> None:  # 20 crons as long as allowed
        for second in range(20):
            validate_cron(f"{second} " + "0," * 485 + "0 9 * * *")

    per_entry = retained_bytes(longest) / 20
    assert per_entry < 4 * MAX_CRON_CHARS, per_entry  # so 512 entries hold about 2 MB at most


BACKWARDS = ["1-0 * * * *", "0 22-2 * * *", "0 0 20-10/2 * *", "0 0 * 12-1 *", "0 0 * * 5-1"]
FORWARDS = ["0 9-17 * * MON-FRI", "0 22-23,0-2 * * *", "*/5 1-3/2 * * *", "0 0 5-5 * *"]


@pytest.mark.parametrize("cron", BACKWARDS)
def test_a_range_that_runs_backwards_is_refused(cron: str) -> None:
    # croniter wraps such a range around ('1-0' = every minute); Vixie cron refuses it.
    with pytest.raises(JobValidationError, match="runs backwards"):
        timing.validate_cron(cron)


@pytest.mark.parametrize("cron", FORWARDS)
def test_ranges_written_low_to_high_are_kept(cron: str) -> None:
    assert timing.validate_cron(cron) == cron
