"""The job hash's spec fields (jobfields.py): every spec reads back as written, defaults are left
out, and a record in the layout before (spec and brief JSON) reads as it did."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ductape_jobs import jobfields
from ductape_jobs.brief import JobBrief
from ductape_jobs.imported import BeatSchedule, ImportedEntry
from ductape_jobs.models import JobRequest, Repeat
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import CeleryCall, JobSpec

NOW = 1_893_456_000_000
TRACE = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
BASE = {"env": "dev", "product_tag": "tests", "event": "echo"}
REQUESTS = [
    {},
    {"input": {"n": 1}, "retries": 3, "timeout": 20, "start_at": NOW + 5_000},
    {"repeat": {"every": 60_000}, "input": {"text": "é \x1f \n \u2028 😀", "deep": [{"a": None}]}},
    {"repeat": {"cron": "0 9 * * MON-FRI", "tz": "Europe/Amsterdam", "limit": 4, "endDate": NOW + 10**9}},
    {
        "repeat": {
            "every": 60_000,
            "misfire": "run_all",
            "catchup_ms": 5,
            "jitter_ms": 7,
            "overlap": "buffer_one",
        }
    },
    {"app": "shop", "key": "nightly/report:1", "start_at": 0},
    {"idempotency_key": "order-1"},
]


def round_trip(spec: JobSpec, traceparent: str | None = None) -> dict[str, str]:
    stored = jobfields.unpack(jobfields.pack_spec(spec, traceparent))
    assert jobfields.spec_of(stored) == spec
    assert jobfields.brief_of(stored) == JobBrief.of(spec, traceparent=traceparent)
    return stored


@pytest.mark.parametrize("request_", REQUESTS)
def test_a_planned_spec_reads_back_as_written(request_: dict[str, Any]) -> None:
    spec = plan_job(JobRequest.parse({**BASE, **request_}), Settings(), Sessions({}), NOW, "job1").spec
    round_trip(spec)
    round_trip(spec, TRACE)


def test_every_optional_field_reads_back() -> None:
    spec = JobSpec(
        **BASE,
        retries=5,
        timeout_s=None,
        input={"email": "***"},
        app="a",
        cache="c",
        start_ms=0,
        rule={
            "every_ms": 5,
            "tz": "UTC",
            "cron": None,
            "limit": None,
            "end_ms": None,
            "misfire": "skip",
            "catchup_ms": 0,
            "overlap": "allow",
        },
        redact_paths=[["email"], ["list", 0]],
        session_tag="user",
        sealed="gAAAA" + "x" * 300,
        input_digest="d" * 64,
        created_ms=NOW,
        celery=CeleryCall(entry="nightly", task="app.t", args=[1, "x"], kwargs={"k": {"n": 1}}),
        key="k:1",
        idempotency_key="i-1",
    )
    stored = round_trip(spec, TRACE)
    assert stored["ar"] == JobBrief.of(spec).argsrepr  # masked for Flower, beside the input


def test_an_imported_entry_reads_back() -> None:
    entry = ImportedEntry(CeleryCall(entry="tick", task="app.tick", args=[1]), Repeat(every=60_000))
    [row], refused = BeatSchedule("app", [entry], Settings()).rows(NOW)
    assert not refused
    spec = jobfields.spec_of(jobfields.unpack(row.spec))
    assert spec.celery == entry.call and jobfields.read_brief(row.spec).celery == entry.call


def test_defaults_are_left_out() -> None:
    spec = plan_job(
        JobRequest.parse({**BASE, "repeat": {"every": 60_000}}), Settings(), Sessions({}), NOW, "j"
    ).spec
    assert set(jobfields.unpack(jobfields.pack_spec(spec))) == {
        "env",
        "tag",
        "ev",
        "to",
        "cr",
        "every",
        "ov",
    }


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
    name=st.text(min_size=1),
)
def test_any_json_input_reads_back_and_never_holds_the_separator(value: Any, name: str) -> None:
    spec = plan_job(
        JobRequest.parse({**BASE, "input": {name: value}}), Settings(), Sessions({}), NOW, "j"
    ).spec
    packed = jobfields.pack_spec(spec)
    assert packed.count(jobfields.SEP) == 2 * len(jobfields.unpack(packed)) - 1
    round_trip(spec)


def test_a_record_in_the_layout_before_reads_as_it_did() -> None:
    spec = plan_job(
        JobRequest.parse({**BASE, "repeat": {"every": 60_000}}), Settings(), Sessions({}), NOW, "j"
    ).spec
    brief = JobBrief.of(spec, traceparent=TRACE)
    spec_json = json.dumps(dataclasses.asdict(spec), separators=(",", ":"))  # as pydantic wrote it
    assert jobfields.spec_of({"spec": spec_json, "status": "scheduled"}) == spec
    brief_json = json.dumps(dataclasses.asdict(brief), separators=(",", ":"))
    assert jobfields.brief_of({"brief": brief_json}) == brief
    older = jobfields.LEGACY_SPEC + jobfields.SEP + spec_json  # READ_DUE before briefs
    assert jobfields.holds_spec(older) and jobfields.read_brief(older) == JobBrief.of(spec)
    assert not jobfields.holds_spec(jobfields.pack_spec(spec))


@pytest.mark.parametrize("packed", ["env", "env\x1fdev\x1fto\x1fsoon", "env\x1fdev"])
def test_damaged_fields_raise_value_error(packed: str) -> None:
    with pytest.raises(ValueError):
        jobfields.read_spec(packed)
    with pytest.raises(ValueError):
        jobfields.read_brief(packed)


# Written by the pydantic models of commit a1ab5ca (model_dump_json), not by this code: a record of
# the layout before jobfields, as Redis holds it, must read back with every field.
PYDANTIC_SPEC = (
    '{"env":"dev","product_tag":"beat_schedule","event":"app.tasks.add","retries":2,"timeout_s":30,'
    '"input":{"args":[1,2],"kwargs":{}},"app":"proj","cache":null,"start_ms":5,"rule":{"every_ms":60000,'
    '"tz":"UTC","limit":null,"end_ms":null,"misfire":"skip","catchup_ms":0,"cron":null,"overlap":"allow"},'
    '"redact_paths":[["a",0]],"session_tag":null,"sealed":null,"input_digest":null,"created_ms":1700000000000,'
    '"celery":{"entry":"add-every-minute","task":"app.tasks.add","args":[1,2],"kwargs":{},'
    '"options":{"queue":"ductape.dev"}},"key":"k1","idempotency_key":null}'
)
PYDANTIC_BRIEF = (
    '{"env":"dev","product_tag":"beat_schedule","event":"app.tasks.add","rule":{"every_ms":60000,'
    '"tz":"UTC","limit":null,"end_ms":null,"misfire":"skip","catchup_ms":0,"cron":null,"overlap":"allow"},'
    '"argsrepr":"{\'args\': [1, 2], \'kwargs\': {}}","timeout_s":30,"celery":{"entry":"add-every-minute",'
    '"task":"app.tasks.add","args":[1,2],"kwargs":{},"options":{"queue":"ductape.dev"}},'
    '"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
)


def test_records_the_pydantic_models_wrote_read_back_whole() -> None:
    spec = jobfields.spec_of({"spec": PYDANTIC_SPEC, "status": "scheduled"})
    call = CeleryCall(
        entry="add-every-minute", task="app.tasks.add", args=[1, 2], options={"queue": "ductape.dev"}
    )
    assert (spec.env, spec.event, spec.retries, spec.timeout_s, spec.start_ms, spec.key) == (
        "dev", "app.tasks.add", 2, 30, 5, "k1",
    )  # fmt: skip
    assert spec.input == {"args": [1, 2], "kwargs": {}} and spec.redact_paths == [["a", 0]]
    assert spec.celery == call and spec.rule is not None and spec.rule["every_ms"] == 60_000
    brief = jobfields.brief_of({"brief": PYDANTIC_BRIEF})
    assert brief == JobBrief.of(spec, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert brief.celery == call and brief.timeout_s == 30


@pytest.mark.parametrize(
    "damaged",
    [
        {"product_tag": "t", "event": "e"},  # env missing
        {"env": "dev", "product_tag": "t", "event": "e", "traceparent": 7},
        {"env": "dev", "product_tag": "t", "event": "e", "timeout_s": True},
        {"env": "dev", "product_tag": "t", "event": "e", "argsrepr": ["x"]},
        {"env": "dev", "product_tag": "t", "event": "e", "celery": {"task": "t"}},
    ],
)
def test_a_damaged_brief_of_the_layout_before_is_a_value_error(damaged: dict[str, object]) -> None:
    # ValueError is what beat's readers catch to set the job aside (a TypeError would escape)
    with pytest.raises(ValueError):
        jobfields.brief_of({"brief": json.dumps(damaged)})
