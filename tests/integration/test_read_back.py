"""Whatever ``schedule()`` accepts, every part can read back: ``get()``, ``list()``, ``upcoming()``,
beat's read and decision (READ_DUE, the next run), the lost-run sweep's read and the worker's.

Hypothesis draws requests over the whole request space, valid or not: numbers of any size and
type in every numeric field, crons and zones valid and not, JSON inputs with huge integers,
floats and any text. A request refused must be refused with our error; one accepted must read
back everywhere (real Redis).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beat.engine import BeatEngine
from ductape_jobs import Ductape, JobValidationError, jobfields, ops
from ductape_jobs.records import Dispatch
from ductape_jobs.settings import Settings
from ductape_jobs.terms import MAX_INT

LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# Naive bounds, as hypothesis wants them; naive times are read as UTC.
EARLIEST, LATEST = datetime(1970, 1, 2), datetime(9999, 12, 30)  # noqa: DTZ001
# Made at draw time: hypothesis shows its strategies, and repr() refuses past 4,300 digits.
HUGE = st.sampled_from([5000, 4299, 300, 19, 20]).flatmap(
    lambda digits: st.sampled_from([10**digits, -(10**digits), 10**digits + 1])
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    HUGE,
    st.floats(),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)
instants = st.one_of(
    st.just(0),
    numbers,
    st.integers(min_value=0, max_value=300_000_000_000_000),
    st.integers(min_value=2_000_000_000_000, max_value=LAST_MS),
    st.datetimes(max_value=LATEST, timezones=st.none() | st.just(UTC)),
    st.datetimes(min_value=EARLIEST, max_value=LATEST).map(lambda d: d.isoformat()),
)
CRONS = ["0 9 * * *", "*/5 * * * *", "0 0 29 2 *", "0 0 31 2 *", "59 23 31 12 *", "0 0 1 1 *", "30 2 * * *",
         "0 0 L * *", "0 0 * * 1#5", "0 0 15W * *", "*/1 * * * * *", "0 0 1 1 * 2099", "x"]  # fmt: skip
ZONES = ["UTC", "America/New_York", "Asia/Kathmandu", "Pacific/Chatham", "Etc/GMT+12", "Mars/Olympus", ""]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE,
    st.floats(),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
wild_repeats = st.fixed_dictionaries(
    {},
    optional={
        "cron": st.sampled_from(CRONS) | st.text(max_size=12),
        "every": numbers | st.integers(1, 10**15),
        "limit": numbers | st.integers(1, 2**40),
        "endDate": instants,
        "tz": st.sampled_from(ZONES) | st.text(max_size=6),
        "misfire": st.sampled_from(["skip", "run_all", "later"]),
        "catchup_ms": numbers | st.integers(0, 10**14),
        "jitter_ms": numbers | st.integers(0, 10**14),
    },
)
# Rules near and at the documented bounds (models.MAX_INT, the year 9999).
every_ms = st.one_of(
    st.integers(1_000, 3_155_760_000_000),
    st.sampled_from([1_000, 86_400_000, MAX_INT, MAX_INT + 1]),
    HUGE.filter(lambda n: n > 0),
)
rule = st.one_of(
    st.fixed_dictionaries({"cron": st.sampled_from(CRONS)}, optional={"tz": st.sampled_from(ZONES)}),
    st.fixed_dictionaries({"every": every_ms}),
)
bounds = st.fixed_dictionaries(
    {},
    optional={
        "limit": st.integers(1, 3) | st.sampled_from([MAX_INT, MAX_INT + 1]),
        "endDate": st.integers(2_000_000_000_000, LAST_MS) | st.just(LAST_MS),
        "misfire": st.sampled_from(["skip", "run_all"]),
        "catchup_ms": st.integers(0, MAX_INT + 1) | st.just(MAX_INT),
        "jitter_ms": st.integers(0, 999),  # below every period DUCTAPE_MIN_EVERY_MS allows
    },
)
repeats = st.one_of(
    st.none(), st.just({}), wild_repeats, st.builds(lambda a, b: {**a, **b}, rule, bounds).filter(bool)
)
wild_requests = st.fixed_dictionaries(
    {
        "env": st.sampled_from(["dev", "prd", "nope"]),
        "product_tag": st.sampled_from(["tests", "a.b-c_1"]),
        "event": st.sampled_from(["echo", "x" * 128]),
    },
    optional={
        "start_at": instants,
        "retries": numbers | st.integers(0, 25),
        "input": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "app": st.none() | st.sampled_from(["web", "a" * 128]),
        "cache": st.none() | st.sampled_from(["short", "unknown"]),
        "repeat": repeats,
    },
)
# Mostly accepted: the fields schedule() checks at their bounds, the input and the rule free.
near_bounds = st.fixed_dictionaries(
    {
        "env": st.sampled_from(["dev", "prd"]),
        "product_tag": st.sampled_from(["tests", "a" * 128]),
        "event": st.just("echo"),
        "retries": st.sampled_from([0, 25]),
        "start_at": st.just(0) | st.integers(2_000_000_000_000, LAST_MS) | st.just(LAST_MS),
        "input": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "repeat": repeats,
    },
    optional={"app": st.just("a" * 128), "cache": st.just("short")},
)
requests = st.one_of(wild_requests, near_bounds)
POISON = {"env": "dev", "product_tag": "tests", "event": "echo", "start_at": 2_000_000_000_000}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
@example(request={**POISON, "repeat": {"every": 10**5000, "limit": 1}})  # issue 12's, shown as found
@example(request={**POISON, "repeat": {"every": 10**19, "limit": 1}})  # past 64 bits
@example(request={**POISON, "repeat": {"every": 1_000, "misfire": "run_all", "catchup_ms": 10**5000}})
def test_whatever_schedule_accepts_every_part_reads_back(
    request: dict[str, Any], ductape: Ductape, settings: Settings, r: redis.Redis
) -> None:
    try:
        handle = ductape.job.schedule(request)
    except JobValidationError:
        return  # refused with our error (anything else escaping is a failure)
    try:
        assert_reads_back(handle.job_id, ductape, settings)
    finally:
        for key in r.scan_iter(f"{settings.key_prefix}:*", count=1_000):
            r.delete(key)


def assert_reads_back(job_id: str, ductape: Ductape, settings: Settings) -> None:
    store, keys = ductape.store, ductape.store.keys
    job = ductape.job.get(job_id)
    listed = ductape.job.list(limit=1_000)
    assert [j.job_id for j in listed] == [job_id] and listed.unreadable == []
    ductape.job.upcoming(job_id, 3)
    # The worker's read (BEGIN_RUN hands it the spec) and the lost-run sweep's.
    jobfields.spec_of(jobfields.fields(store.redis.hgetall(keys.job(job_id))))
    if job.last_run_id:
        assert [type(d) for d in store.run(ops.beat.dispatches(store.keys, [job.last_run_id]))] == [Dispatch]
    # Beat's read, and its decision at the entry's due time and a day later.
    engine = BeatEngine(store, settings, ductape.messages, "read-back")
    entries = store.run(ops.beat.due_entries(store.keys, 2**62, 10))
    assert [e.job_id for e in entries] == ([job_id] if job.next_run_ms is not None else [])
    for entry in entries:
        for at in (entry.due_ms, entry.due_ms + int(timedelta(days=1).total_seconds() * 1000)):
            claim = engine._decide(entry, at)
            assert claim.reason == "", claim.reason
            assert claim.message.payload
