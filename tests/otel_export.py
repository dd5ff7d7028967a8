"""OpenTelemetry for the worker and beat processes the tests start: listed in DUCTAPE_HANDLERS,
it runs the README's "Tracing" lines with an exporter that appends each finished span as one
JSON line to ``TEST_SPANS_FILE``, which the test then reads."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

README = Path(__file__).resolve().parents[1] / "README.md"


class FileSpanExporter(SpanExporter):
    """Appends spans to a file, one JSON object a line (one write per batch: pool processes
    share the file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(as_dict(span)) + "\n" for span in spans)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    """What the tests compare: names, ids (hex, as in a traceparent), parent, links, attributes."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "links": [[f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"] for link in span.links],
        "attributes": dict(span.attributes or {}),
    }


def readme_setup() -> str:
    """The Python block of the README's "Tracing" section."""
    section = README.read_text(encoding="utf-8").split("\n### Tracing\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "README's Tracing section lost its setup block"
    return found.group(1)


def configure(exporter: SpanExporter) -> dict[str, Any]:
    """Run the README's lines with ``exporter``; their names (``provider``) are returned."""
    names: dict[str, Any] = {"exporter": exporter}
    exec(readme_setup(), names)
    return names


if os.environ.get("TEST_SPANS_FILE"):
    configure(FileSpanExporter(os.environ["TEST_SPANS_FILE"]))
