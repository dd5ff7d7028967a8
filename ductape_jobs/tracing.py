"""Our own OpenTelemetry spans, when ``opentelemetry-api`` is installed (``ductape-jobs[otel]``).

Without it every function here is a no-op: OpenTelemetry is never a hard dependency. The trace
context itself travels in the Celery message headers (``traceparent``), put there by whatever
receiver of ``before_task_publish`` injects it (opentelemetry-instrumentation-celery does); a job
keeps only the W3C ``traceparent`` of the span that scheduled it (its brief), so beat can link a
recurring run's trace to it, or put a one-off's late send back in its trace. Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    trace = None  # type: ignore[assignment]

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")  # W3C, version 00: 55 chars
_propagator = None if trace is None else TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


def span(
    name: str, parent: str | None = None, *, link: bool = False, **attributes: Any
) -> AbstractContextManager[None]:
    """A current span ``name``: a child of the current span, or with ``parent`` (a traceparent)
    a child of that one, or with ``link`` the root of a new trace linked to it. Without a tracer
    provider, a shared no-op (beat and ``schedule_many()`` call this per run)."""
    if not _configured():
        return _NO_SPAN
    return _span(name, parent, link, attributes)


@contextlib.contextmanager
def _span(name: str, parent: str | None, link: bool, attributes: dict[str, Any]) -> Iterator[None]:
    assert trace is not None and _propagator is not None
    tracer = trace.get_tracer("ductape_jobs")
    context, links = None, None
    if parent is not None:
        remote = _propagator.extract({"traceparent": parent})
        if link:
            context, links = Context(), [trace.Link(trace.get_current_span(remote).get_span_context())]
        else:
            context = remote
    attrs = {f"ductape.{key}": value for key, value in attributes.items() if value is not None}
    with tracer.start_as_current_span(name, context=context, links=links, attributes=attrs):
        yield


def _configured() -> bool:
    """Whether a tracer provider was set (until then OpenTelemetry's API records nothing, and
    our spans would only cost time on beat's and the producer's hot paths)."""
    # OpenTelemetry's global, set once by set_tracer_provider(), read directly: the public
    # get_tracer_provider() looks the environment up on every call until one is set.
    return trace is not None and getattr(trace, "_TRACER_PROVIDER", None) is not None


def traceparent() -> str | None:
    """The current span's W3C traceparent (None without a sampled, valid span)."""
    if _propagator is None or not _configured():
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    value = carrier.get("traceparent")
    return value if value is not None and TRACEPARENT.match(value) else None


def trace_of(stored: str) -> str | None:
    """A run record's kept traceparent, if it is a valid one ('' or anything else: None)."""
    return stored if stored and TRACEPARENT.match(stored) else None
