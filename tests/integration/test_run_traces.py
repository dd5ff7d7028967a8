"""A run keeps its trace in its record (``traceparent``), over real Redis: the lost-run sweep's
resend of a schedule's run is parented in that run's trace, in process with OpenTelemetry's
in-memory exporter (a retry beat hands back: tests/e2e/test_tracing_e2e.py); without a tracer
provider nothing is kept."""

from __future__ import annotations

import json

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from beat.lost import LostRuns
from ductape_jobs import Ductape
from ductape_jobs.celery_app import create_app
from ductape_jobs.clock import now_ms
from ductape_jobs.settings import Settings
from ductape_jobs.wire import MessageBuilder
from tests.integration.test_backfill import echo
from tests.otel_export import as_dict

MIN = 60_000


def test_a_lost_schedule_run_is_sent_again_in_its_runs_trace(
    ductape: Ductape,
    settings: Settings,
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = exported
    app = create_app(settings)
    with trace.get_tracer("test").start_as_current_span("creator"):  # its first run goes at once
        handle = ductape.job.schedule(**echo(repeat={"every": MIN, "limit": 1}))
    run_id = ductape.job.get(handle.job_id).last_run_id or ""
    r, queue = ductape.store.redis, ductape.store.keys.broker_prefix + settings.queue_for("dev")
    assert r.rpop(queue)  # popped by a worker that died before kombu recorded it: lost
    lost = LostRuns(ductape.store, settings, MessageBuilder(app, settings))
    assert lost.sweep(now_ms() + lost.after_ms + 1) == 1
    provider.force_flush()
    spans = [as_dict(s) for s in memory.get_finished_spans()]
    [release] = [s for s in spans if s["name"] == "ductape.release"]
    [resend] = [s for s in spans if s["name"] == "ductape.resend"]
    assert release["parent_id"] is None and release["links"]  # the run's own trace, linked
    kept = r.hget(ductape.store.keys.run(run_id), "traceparent")
    assert kept is not None and kept.decode().startswith(f"00-{release['trace_id']}-{release['span_id']}-")
    assert resend["attributes"]["ductape.run_id"] == run_id
    assert (resend["trace_id"], resend["parent_id"], resend["links"]) == (
        release["trace_id"],
        release["span_id"],
        [],
    )
    headers = json.loads(r.lindex(queue, 0) or b"{}")["headers"]  # what the worker's span reads
    assert headers["id"] == run_id and headers["traceparent"].split("-")[1] == release["trace_id"]
    app.close()


def test_without_a_tracer_provider_a_run_keeps_no_trace(ductape: Ductape) -> None:
    handle = ductape.job.schedule(**echo(repeat={"every": MIN, "limit": 1}))
    run_id = ductape.job.get(handle.job_id).last_run_id or ""
    assert ductape.store.redis.hkeys(ductape.store.keys.run(run_id))  # the run is there
    assert ductape.store.redis.hget(ductape.store.keys.run(run_id), "traceparent") is None
