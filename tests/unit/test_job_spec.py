"""A stored job's spec (terms.JobSpec): a plain dataclass whose fingerprint stays what the pydantic
model's was (stored identity keys hold it), which refuses what a damaged record could get wrong,
and which pydantic still validates and dumps inside a JobRecord."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from ductape_jobs import terms
from ductape_jobs.models import JobRecord
from ductape_jobs.terms import CeleryCall, JobSpec

PLAIN: dict[str, Any] = {
    "env": "dev",
    "product_tag": "billing",
    "event": "charge",
    "retries": 0,
    "input": {"n": 1},
    "created_ms": 1,
}
EVERY = {
    "env": "prd",
    "product_tag": "billing.eu",
    "event": "sweep",
    "retries": 2,
    "timeout_s": 30,
    "input": {"a": [1, 2.5, None, True], "b": {"z": "é", "a": "x"}},
    "app": "shop",
    "cache": "c1",
    "start_ms": 5,
    "rule": {
        "cron": None,
        "tz": "UTC",
        "every_ms": 60000,
        "limit": None,
        "end_ms": None,
        "misfire": "skip",
        "catchup_ms": 0,
        "overlap": "skip",
    },
    "created_ms": 1_700_000_000_000,
    "key": "k/1",
}
SEALED_CRON = {
    "env": "dev",
    "product_tag": "p",
    "event": "e",
    "retries": 1,
    "input": {"to": "***"},
    "rule": {
        "cron": "*/5 * * * *",
        "tz": "Europe/Paris",
        "every_ms": None,
        "limit": 3,
        "end_ms": 1_800_000_000_000,
        "misfire": "run_all",
        "catchup_ms": 1000,
        "jitter_ms": 500,
        "overlap": "allow",
    },
    "redact_paths": [["to"], ["list", 0]],
    "session_tag": "user",
    "sealed": "v1.abc",
    "input_digest": "d" * 32,
    "created_ms": 2,
    "celery": {"entry": "nightly", "task": "app.t", "args": [1], "kwargs": {}, "options": {"queue": "q"}},
}


@pytest.mark.parametrize(
    ("fields", "fingerprint"),
    [
        # Computed by the pydantic JobSpec (models.py, before this dataclass): model_dump of the
        # identity fields as sorted compact JSON, hashed.
        (PLAIN, "b81c67ef2bde70e9377fc185f1102425"),
        (EVERY, "33cc505807494f479c2d627b03430e6f"),
        (SEALED_CRON, "446ee3f9fba55098cfca422462f99744"),
        (
            {**PLAIN, "input": {}, "product_tag": "p", "event": "e", "created_ms": 0},
            "4c6c373a9681bfac3f58a9fe8d6fc90a",
        ),
    ],
)
def test_the_fingerprint_is_the_one_stored_identity_keys_hold(
    fields: dict[str, Any], fingerprint: str
) -> None:
    assert JobSpec(**fields).fingerprint() == fingerprint


def test_a_spec_reads_back_from_the_json_the_layout_before_stored() -> None:
    spec = JobSpec(**SEALED_CRON)
    assert isinstance(spec.celery, CeleryCall)
    assert JobSpec.from_json(json.dumps(dataclasses.asdict(spec), separators=(",", ":"))) == spec
    # a record written before timeouts, keys and imports: their defaults
    assert JobSpec.from_json(json.dumps(PLAIN)) == JobSpec(**PLAIN)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{",
        json.dumps({**PLAIN, "extra": 1}),
        json.dumps({k: v for k, v in PLAIN.items() if k != "env"}),
    ],
)
def test_json_that_is_no_spec_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a job spec|Expecting"):
        JobSpec.from_json(text)


DAMAGED: list[tuple[str, Any]] = [
    ("env", None),
    ("product_tag", 7),
    ("event", b"e"),
    ("retries", True),
    ("retries", "1"),
    ("created_ms", 1.0),
    ("start_ms", None),
    ("timeout_s", "30"),
    ("timeout_s", False),
    ("input", ["n"]),
    ("input", {1: "n"}),
    ("rule", "every minute"),
    ("redact_paths", [("to",)]),
    ("redact_paths", [["to", None]]),
    ("redact_paths", "to"),
    ("sealed", 1),
    ("key", ["k"]),
    ("celery", {"task": "app.t"}),
    ("celery", "app.t"),
]


@pytest.mark.parametrize(("name", "value"), DAMAGED)
def test_a_damaged_field_raises_value_error_naming_it(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{name}"):
        JobSpec(**{**PLAIN, name: value})


def _every_field(given: dict[str, Any]) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(JobSpec)} | {"redact_paths": []}
    return defaults | given


@pytest.mark.parametrize("fields", [PLAIN, EVERY, SEALED_CRON])
def test_a_spec_made_of_every_field_is_the_one_its_constructor_makes(fields: dict[str, Any]) -> None:
    # What jobfields reads skips the frozen __init__ (JobSpec.of_fields), not the checks.
    made = JobSpec.of_fields(_every_field(fields))
    assert made == JobSpec(**fields) and type(made.celery) is type(JobSpec(**fields).celery)
    assert JobSpec.of_fields(dict(PLAIN)) == JobSpec(**PLAIN)  # some fields: the constructor's defaults


@pytest.mark.parametrize(("name", "value"), DAMAGED)
def test_a_spec_made_of_every_field_refuses_a_damaged_one_alike(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{name}"):
        JobSpec.of_fields({**_every_field(PLAIN), name: value})


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(JobSpec)])
def test_the_fast_type_pass_looks_at_every_field(name: str) -> None:
    # terms._usual names each field by hand (a loop over the field lists costs twice as much, on
    # every run): a field added to JobSpec but not to it would skip the checks.
    spec = JobSpec(**PLAIN)
    assert terms._usual(spec)
    spec.__dict__[name] = object()  # never a usual type
    assert not terms._usual(spec)


def test_a_damaged_seal_is_not_shown() -> None:
    with pytest.raises(ValueError) as raised:
        JobSpec(**{**PLAIN, "sealed": ["s3cret"]})
    assert "s3cret" not in str(raised.value)


def test_pydantic_validates_and_dumps_it_inside_a_job_record() -> None:
    record = {"job_id": "j", "status": "scheduled", "recurring": True, "created_ms": 1, "updated_ms": 1}
    job = JobRecord.model_validate({**record, "spec": SEALED_CRON})
    assert job.spec == JobSpec(**SEALED_CRON) and isinstance(job.spec.celery, CeleryCall)
    shown = job.model_dump(mode="json", exclude={"spec": {"sealed"}})  # as the CLI prints a job
    assert "sealed" not in shown["spec"] and shown["spec"]["celery"]["entry"] == "nightly"
    with pytest.raises(ValueError, match="extra"):
        JobRecord.model_validate({**record, "spec": {**SEALED_CRON, "extra": 1}})
    with pytest.raises(ValueError, match="env"):
        JobRecord.model_validate({**record, "spec": {**SEALED_CRON, "env": None}})
