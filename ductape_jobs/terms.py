"""The vocabulary's plain parts: name patterns and bounds, job and run states, run ids, task names
and the Celery call an imported entry sends. No I/O, and no pydantic: beat and the worker's
start-up read these without loading the validated models of models.py (~10 MB a process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from ductape_jobs.errors import JobValidationError, shown

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
SLUG_FIX = "use letters, digits, '_', '.' or '-', starting with a letter or digit, at most 128 characters"
# A caller-chosen ``key`` or ``idempotency_key``: part of a Redis key name, so bounded and plain.
KEY = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$"
KEY_FIX = (
    "use letters, digits, '_', '.', ':', '/' or '-', starting with a letter or digit, at most 200 characters"
)
# Upper bounds of the numeric fields, so that no number is too large to store, read back or show
# (CPython cannot even print an int past 4,300 digits): repeat.every, limit and catchup_ms hold
# in a signed 64-bit integer; start_at and endDate end at the year 9999 (timing.MAX_MS).
MAX_INT = 2**63 - 1
MAX_RETRIES = 25
# Celery names its own tasks celery.* (celery.chord_unlock, celery.backend_cleanup, ...); a task
# of ours there would replace one of them in the worker.
CELERY_NAMESPACE = "celery."
MAX_TIMEOUT_S = 86_400  # a job's ``timeout`` (seconds): at most a day


class JobStatus(StrEnum):
    """Where a job is in its life."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    BUFFERED = "buffered"  # repeat.overlap=buffer_one: waits in the due index for the run before it
    # A plain Celery task of an imported beat_schedule entry, handed to the broker: from here on
    # its execution is Celery's (the app's own worker runs it; no outcome comes back to us).
    SENT = "sent"


@dataclass(frozen=True)
class CeleryCall:
    """A plain Celery task an imported ``beat_schedule`` entry sends (beat/imported.py), as
    ``app.send_task(task, args, kwargs, **options)`` would.

    A plain dataclass, so beat reads one without loading pydantic; pydantic validates it inside a
    ``JobSpec`` (and forbids unknown fields there, as for the models).
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    entry: str  # the beat_schedule entry's name
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Resolved at import: queue (its broker list), exchange, routing_key, priority, expires,
    # headers, time_limit, soft_time_limit
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: object) -> CeleryCall:
        """A call as JSON holds it (a stored brief); ValueError when it is not one."""
        if not isinstance(data, dict) or not {"entry", "task"} <= set(data) <= _CALL_FIELDS:
            raise ValueError(f"celery: not a Celery call: {str(data)[:64]!r}")
        call = cls(**data)
        if not (isinstance(call.entry, str) and isinstance(call.task, str)):
            raise ValueError(f"celery: entry and task must be strings: {str(data)[:64]!r}")
        if not (
            isinstance(call.args, list) and isinstance(call.kwargs, dict) and isinstance(call.options, dict)
        ):
            raise ValueError(
                f"celery: args, kwargs and options must be a list and objects: {str(data)[:64]!r}"
            )
        return call


_CALL_FIELDS = {"entry", "task", "args", "kwargs", "options"}


def hard_limit_s(timeout_s: int) -> int:
    """When a handler still running past its timeout is killed: a grace of a tenth, 1..60 s."""
    return timeout_s + min(max(timeout_s // 10, 1), 60)


def ms_to_datetime(value_ms: int | None) -> datetime | None:
    """Epoch ms to an aware UTC datetime (None stays None)."""
    return None if value_ms is None else datetime.fromtimestamp(value_ms / 1000, tz=UTC)


def task_name(product_tag: str, event: str) -> str:
    """The Celery task of an event: ``<product_tag>.<event>``, or ``<product_tag>:<event>`` when the
    product tag holds a dot.

    One name per pair: a slug never holds ':', so a name with one splits there, and a name without
    one came from a dotless product tag, which ends at its first dot (``billing.refund``/``notify``
    is ``billing.refund:notify``, ``billing``/``refund.notify`` is ``billing.refund.notify``).
    """
    return f"{product_tag}{':' if '.' in product_tag else '.'}{event}"


def check_task_namespace(product_tag: str, field: str = "product_tag") -> None:
    """Refuse a product tag whose tasks would be named in Celery's own ``celery.*`` namespace."""
    if f"{product_tag}.".startswith(CELERY_NAMESPACE):
        raise JobValidationError(
            field,
            f"{shown(product_tag)} is reserved: its tasks would be named {CELERY_NAMESPACE}<event>, "
            "where Celery keeps its own tasks (celery.chord_unlock, celery.backend_cleanup, ...); "
            "choose another product tag",
        )


def run_id_for(job_id: str, nominal_ms: int) -> str:
    """The deterministic run id, also used as the Celery task id."""
    return f"{job_id}:{nominal_ms}"


def job_id_of(run_id: str) -> str:
    """The job a run id belongs to."""
    return run_id.rsplit(":", 1)[0]
