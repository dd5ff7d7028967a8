"""What the CLI prints from Redis cannot drive the terminal: controls and bidi marks are shown escaped."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductape_jobs.cli.doctor import FAIL, OK, Finding, render
from ductape_jobs.cli.output import job_detail, job_json, jobs_table, printable, run_json, runs_table
from ductape_jobs.models import JobRecord, RunRecord
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec, JobStatus, RunStatus

# What a terminal acts on: C0 (ESC starts CSI/OSC sequences, BEL ends OSC), DEL, C1 (U+009B is a
# one-character CSI), line/paragraph separators and bidi marks, overrides and isolates.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = (
    "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b1m\rover\u202egnp.exe\u2066x\u2069\x00\x7f\u2028end\ttab\nline2"
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\x9b1mb", "a\\x9b1mb"),
        ("bell\x07", "bell\\x07"),
        ("cr\rlf\n", "cr\\x0dlf\\x0a"),
        ("rtl\u202eexe", "rtl\\u202eexe"),
        ("iso\u2066x\u2069", "iso\\u2066x\\u2069"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("del\x7f nul\x00", "del\\x7f nul\\x00"),
        ("plain Zoë 日本 🙂 \\x1b", "plain Zoë 日本 🙂 \\x1b"),
    ],
)
def test_printable_shows_controls_as_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_keeps_only_what_it_is_told_to() -> None:
    assert printable("a\nb\tc", keep="\n") == "a\nb\\x09c"


@given(st.text())
def test_nothing_unsafe_survives(text: str) -> None:
    assert not UNSAFE.search(printable(text))
    assert not UNSAFE.search(printable(text, keep="\n").replace("\n", ""))


def hostile_job() -> JobRecord:
    spec = JobSpec(
        env="dev" + HOSTILE,
        product_tag="p" + HOSTILE,
        event="e" + HOSTILE,
        retries=0,
        input={HOSTILE: HOSTILE},
        app=HOSTILE,
        cache=HOSTILE,
        rule={"cron": "0 9 * * *", "tz": HOSTILE, "every_ms": None, "limit": None, "end_ms": None},
        created_ms=0,
    )
    return JobRecord(
        job_id="j" + HOSTILE,
        spec=spec,
        status=JobStatus.FAILED,
        recurring=True,
        last_run_id="r" + HOSTILE,
        last_error=HOSTILE,
        result={HOSTILE: [HOSTILE]},
        created_ms=0,
        updated_ms=0,
    )


def hostile_run() -> RunRecord:
    return RunRecord(
        run_id="r" + HOSTILE,
        job_id="j" + HOSTILE,
        nominal_ms=0,
        status=RunStatus.FAILED,
        error=HOSTILE,
        traceback=HOSTILE,
        result=HOSTILE,
    )


def test_tables_and_details_escape_every_field_read_from_redis() -> None:
    job, run = hostile_job(), hostile_run()
    for text in (jobs_table([job]), runs_table([run])):
        assert not UNSAFE.search(text.replace("\n", ""))
        assert len(text.splitlines()) == 2  # a header and one row: no field forged a line
        assert "\\x1b]0;pwned\\x07" in text
    detail = job_detail(job)
    assert not UNSAFE.search(detail.replace("\n", ""))
    assert len(detail.splitlines()) == 22  # one line a field
    assert "\\x1b" in detail.split("last_error")[1].splitlines()[0]


def test_json_output_is_escaped_by_json_itself() -> None:
    job, run = hostile_job(), hostile_run()
    for value in (job_json(job), run_json(run)):
        text = json.dumps(value, indent=2, default=str)  # what echo_json prints
        assert not UNSAFE.search(text.replace("\n", ""))
        assert json.loads(text) == value  # nothing lost: scripts get the exact text back


def test_doctor_report_escapes_worker_names_and_details() -> None:
    findings = [
        Finding("redis", OK, "redis://h answers"),
        Finding(f"worker {HOSTILE}", FAIL, f"serves {HOSTILE}", f"HDEL workers {HOSTILE}"),
    ]
    report = render(findings, Settings())
    assert not UNSAFE.search(report.replace("\n", ""))
    assert len(report.splitlines()) == 5  # header, two checks, one fix, the summary
