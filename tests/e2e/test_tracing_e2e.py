"""Tracing end to end: the README's OpenTelemetry lines in the test (in-memory exporter), in a
real worker and in a real beat (each exporting its spans to a file, tests/otel_export.py), and
the trace ids, parents and links that tie them together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ductape_jobs import Ductape, JobStatus
from tests.otel_export import as_dict
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

Span = dict[str, Any]


def test_one_off_in_the_callers_trace_schedules_linked_retries_in_their_run(
    procs: Processes,
    ductape: Ductape,
    tmp_path: Path,
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = exported
    worker_file, beat_file = tmp_path / "worker.jsonl", tmp_path / "beat.jsonl"
    handlers = "tests.handlers,tests.otel_export"
    # A 1 s horizon: a retry's 2 s backoff (after attempt 2) waits in the due index for beat.
    procs.worker(DUCTAPE_HANDLERS=handlers, TEST_SPANS_FILE=str(worker_file), DUCTAPE_HORIZON_MS="1000")
    # -A workers: beat loads the handler modules, and with them tests.otel_export's exporter
    procs.beat(
        app="workers", DUCTAPE_HANDLERS=handlers, TEST_SPANS_FILE=str(beat_file), DUCTAPE_HORIZON_MS="1000"
    )

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller"):  # fails once: Celery's retry sends attempt 2
        once = ductape.job.schedule(
            env="dev", product_tag="tests", event="flaky", input={"succeed_on": 2}, retries=2
        )
    with tracer.start_as_current_span("creator"):  # its first run goes at once, its second via beat
        every = ductape.job.schedule(
            env="dev", product_tag="tests", event="echo", input={}, repeat={"every": 1000, "limit": 2}
        )
    with tracer.start_as_current_span("retrier"):  # its run: a Celery retry, then one via beat's due index
        retrying = ductape.job.schedule(
            env="dev", product_tag="tests", event="flaky", input={"succeed_on": 3}, retries=2,
            repeat={"every": 3_600_000, "limit": 1},
        )  # fmt: skip
    wait_for(lambda: ductape.job.get(once.job_id).status == JobStatus.COMPLETED, 60, "the one-off done")
    [one_off] = [r.run_id for r in ductape.job.runs(once.job_id)]
    repeats = wait_for(lambda: run_ids(ductape, every.job_id, 2), 30, "the schedule's two runs")
    [retried] = wait_for(lambda: run_ids(ductape, retrying.job_id, 1), 30, "the retried schedule's run")
    wait_for(
        lambda: exported_runs(worker_file, [one_off, one_off, *repeats, *[retried] * 3]), 60, "worker spans"
    )
    wait_for(lambda: len(named(read_spans(beat_file), "ductape.release")) >= 2, 30, "beat's spans")
    provider.force_flush()
    here = [as_dict(s) for s in memory.get_finished_spans()]
    worker, beat = read_spans(worker_file), read_spans(beat_file)
    by_id = {s["span_id"]: s for s in here + worker + beat}

    # A one-off: caller > ductape.schedule > apply_async (here) > run (worker) > ductape.run.
    caller = one(here, "caller")
    schedule = one(here, "ductape.schedule", trace_id=caller["trace_id"])
    assert schedule["parent_id"] == caller["span_id"]
    published = one(here, "apply_async/tests.flaky", trace_id=caller["trace_id"])
    assert published["parent_id"] == schedule["span_id"] and published["trace_id"] == caller["trace_id"]
    attempts = sorted(runs_of(worker, one_off), key=lambda a: a["attributes"]["ductape.attempt"])
    first, retry = (by_id[a["parent_id"]] for a in attempts)
    assert first["name"] == retry["name"] == "run/tests.flaky"
    assert {first["trace_id"], retry["trace_id"]} == {caller["trace_id"]}  # the retry stays in it
    assert first["parent_id"] == published["span_id"]
    resent = by_id[retry["parent_id"]]  # Celery's retry, published inside the first attempt
    assert resent["name"] == "apply_async/tests.flaky" and resent["parent_id"] == first["span_id"]

    # A schedule: each run its own trace, rooted in a release linked to the creating span.
    creator = one(here, "creator")
    created = one(here, "ductape.schedule", trace_id=creator["trace_id"])
    roots = []
    for run_id in repeats:
        [run] = runs_of(worker, run_id)
        chain = chain_of(run, by_id)
        root = chain[-1]
        names = ["ductape.run", "run/tests.echo", "apply_async/tests.echo", "ductape.release"]
        assert [s["name"] for s in chain] == names
        assert root["links"] == [[creator["trace_id"], created["span_id"]]]
        assert root["attributes"]["ductape.run_id"] == run_id
        roots.append(root)
    assert len({caller["trace_id"], creator["trace_id"], *(r["trace_id"] for r in roots)}) == 4
    assert roots[0] in here and roots[1] in beat  # the first run went at once, beat released the second

    # A schedule's run retried through beat's due index stays in its run's trace.
    retrier = one(here, "retrier")
    scheduled = one(here, "ductape.schedule", trace_id=retrier["trace_id"])
    [first_release] = [
        s for s in named(here, "ductape.release") if s["attributes"]["ductape.run_id"] == retried
    ]
    assert first_release["links"] == [[retrier["trace_id"], scheduled["span_id"]]]
    attempts = sorted(runs_of(worker, retried), key=lambda a: a["attributes"]["ductape.attempt"])
    assert len(attempts) == 3 and {a["trace_id"] for a in attempts} == {first_release["trace_id"]}
    [handed_back] = [
        s for s in named(beat, "ductape.release") if s["attributes"]["ductape.run_id"] == retried
    ]
    assert handed_back["parent_id"] == first_release["span_id"]  # beat's release of the parked retry
    assert handed_back["trace_id"] == first_release["trace_id"] and not handed_back["links"]
    chains = [chain_of(attempt, by_id) for attempt in runs_of(worker, retried)]
    assert all(chain[-1] == first_release for chain in chains)  # each attempt: one trace, one root
    assert sum(handed_back in chain for chain in chains) == 1  # the attempt beat handed back


def chain_of(span: Span, by_id: dict[str, Span]) -> list[Span]:
    """The span and its ancestors, up to its trace's root."""
    chain = [span]
    while chain[-1]["parent_id"] is not None:
        chain.append(by_id[chain[-1]["parent_id"]])
    return chain


def read_spans(path: Path) -> list[Span]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s["name"] == name]


def one(spans: list[Span], name: str, **match: Any) -> Span:
    [found] = [s for s in named(spans, name) if all(s[k] == v for k, v in match.items())]
    return found


def runs_of(spans: list[Span], run_id: str) -> list[Span]:
    """Our ``ductape.run`` spans of one run (one per attempt)."""
    return [s for s in named(spans, "ductape.run") if s["attributes"]["ductape.run_id"] == run_id]


def exported_runs(path: Path, run_ids: list[str]) -> bool:
    """Whether the worker exported a ``ductape.run`` span for each of ``run_ids`` (repeated ids:
    one per attempt)."""
    spans = read_spans(path)
    return all(len(runs_of(spans, r)) >= run_ids.count(r) for r in run_ids)


def run_ids(ductape: Ductape, job_id: str, n: int) -> list[str] | None:
    """The job's run ids, oldest first, once it has ``n``."""
    ids = sorted(r.run_id for r in ductape.job.runs(job_id))
    return ids if len(ids) == n else None
