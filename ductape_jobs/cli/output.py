"""How the CLI prints: aligned tables for people, JSON for scripts, one-line errors, no secrets."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from ductape_jobs.models import JobRecord, RunRecord, ScheduleHandle
from ductape_jobs.scrub import MASK
from ductape_jobs.urls import mask_url

# What a terminal acts on instead of showing: C0 and C1 controls (ESC starts escape sequences, and
# U+009B is a one-character CSI), DEL, the Unicode line and paragraph separators, and the bidi
# marks, overrides and isolates that reorder what follows them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep: str = "") -> str:
    """``text`` safe to print on a terminal: each control character shown as an escape (``\\x1b``).

    ``keep`` lists the characters let through (a report's own newlines).
    """
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escaped(m.group()), text)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def say(text: str) -> None:
    """Print a report for people on stdout, with its own newlines and nothing a terminal acts on."""
    click.echo(printable(text, keep="\n"))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with URL passwords and every given secret masked."""
    text = mask_url(text)
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, default=str))


def note(message: str) -> None:
    """A remark for people, on stderr so that stdout stays clean for pipes."""
    click.echo(printable(message, keep="\n"), file=sys.stderr)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Plain text columns, left aligned, two spaces apart."""
    cells = [
        [str(h) for h in headers],
        *[["-" if v is None else printable(str(v)) for v in row] for row in rows],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def when(ms: int | None) -> str:
    """An epoch-ms instant as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), or ``-``."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def stamp(value: datetime | None) -> str:
    """An aware datetime in the same form as ``when``."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(ms: float) -> str:
    """A duration for people: ``850 ms``, ``12 s``, ``3 min``, ``5 h``, ``2 d``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if abs(ms) >= size:
            return f"{ms / size:.0f} {unit}"
    return f"{ms:.0f} ms"


def repeat_text(rule: dict[str, Any] | None) -> str:
    """A repeat rule in a few words: ``cron 0 9 * * * (America/New_York), limit 4``."""
    if not rule:
        return "-"
    if rule.get("cron"):
        text = f"cron {rule['cron']}" + (f" ({rule['tz']})" if rule.get("tz", "UTC") != "UTC" else "")
    else:
        text = f"every {span(rule['every_ms'])}"
    if rule.get("limit"):
        text += f", limit {rule['limit']}"
    if rule.get("end_ms"):
        text += f", until {when(rule['end_ms'])}"
    if rule.get("jitter_ms"):
        text += f", jitter {span(rule['jitter_ms'])}"
    if rule.get("overlap", "allow") != "allow":  # a rule stored before the field overlaps
        text += f", overlap {rule['overlap']}"
    return text


def one_line(text: str | None, width: int = 60) -> str:
    """The first line of ``text``, cut to ``width``."""
    if not text:
        return "-"
    first = text.strip().splitlines()[0] if text.strip() else "-"
    return printable(first if len(first) <= width else first[: width - 3] + "...")


def job_json(job: JobRecord) -> dict[str, Any]:
    """A job for scripts: the record as the library returns it, without the sealed input (and a
    sealed result masked: it holds what the handler made of session values)."""
    data = job.model_dump(mode="json", exclude={"spec": {"sealed"}})
    if job.spec.sealed is not None and data["result"] is not None:
        data["result"] = MASK
    data["next_run_at"] = None if job.next_run_at is None else job.next_run_at.isoformat()
    return data


def run_json(run: RunRecord, sealed: bool = False) -> dict[str, Any]:
    """A run for scripts; the result masked when its job is ``sealed`` (has session values)."""
    data = run.model_dump(mode="json")
    if sealed and data["result"] is not None:
        data["result"] = MASK
    return data


def handle_json(handle: ScheduleHandle) -> dict[str, Any]:
    """What ``schedule`` returned, for scripts."""
    return handle.model_dump(mode="json")


def jobs_table(jobs: Sequence[JobRecord]) -> str:
    """The ``list`` table."""
    headers = ("JOB_ID", "STATUS", "ENV", "PRODUCT", "EVENT", "REPEAT", "NEXT_RUN", "RUNS")
    rows = [
        (
            j.job_id,
            j.status.value,
            j.spec.env,
            j.spec.product_tag,
            j.spec.event,
            repeat_text(j.spec.rule),
            when(j.next_run_ms),
            j.runs_done,
        )
        for j in jobs
    ]
    return table(headers, rows)


def job_detail(job: JobRecord) -> str:
    """The ``show`` block: one field a line."""
    spec = job.spec
    fields: list[tuple[str, object]] = [
        ("job_id", job.job_id),
        ("status", job.status.value),
        ("env", spec.env),
        ("product_tag", spec.product_tag),
        ("event", spec.event),
        ("key", spec.key),
        ("idempotency_key", spec.idempotency_key),
        ("app", spec.app),
        ("cache", spec.cache),
        ("retries", spec.retries),
        ("timeout_s", spec.timeout_s),
        ("repeat", repeat_text(spec.rule)),
        ("next_run", when(job.next_run_ms)),
        ("runs_done", job.runs_done),
        ("skipped_slots", job.skipped_slots),
        ("attempts", job.attempts),
        ("last_run_id", job.last_run_id),
        ("last_error", one_line(job.last_error, 200)),
        ("created", when(job.created_ms)),
        ("updated", when(job.updated_ms)),
        ("input", json.dumps(spec.input, default=str)),
        ("result", "-" if job.result is None else _result_text(job)),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(
        f"{name.ljust(width)}  {'-' if value is None else printable(str(value))}" for name, value in fields
    )


def _result_text(job: JobRecord) -> str:
    return MASK if job.spec.sealed is not None else json.dumps(job.result, default=str)


def runs_table(runs: Sequence[RunRecord]) -> str:
    """The ``runs`` and ``failed`` tables."""
    headers = ["RUN_ID", "STATUS", "ATTEMPTS", "NOMINAL", "STARTED", "FINISHED", "ERROR"]
    rows = [
        [
            r.run_id,
            r.status.value + (" (manual)" if r.manual else ""),
            r.attempts,
            when(r.nominal_ms),
            when(r.started_ms),
            when(r.finished_ms),
            one_line(r.error),
        ]
        for r in runs
    ]
    return table(headers, rows)


def handles_table(handles: Sequence[ScheduleHandle]) -> str:
    """The ``schedule`` table: one row per request, in order."""
    headers = ("JOB_ID", "STATUS", "FIRST_RUN", "NEXT_RUN", "RECURRING", "NEW")
    rows = [
        (
            h.job_id,
            h.status.value,
            stamp(h.scheduled_at),
            stamp(h.next_run_at),
            "yes" if h.recurring else "no",
            "yes" if h.created else "no (same schedule exists)",
        )
        for h in handles
    ]
    return table(headers, rows)
