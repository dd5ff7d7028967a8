"""The vocabulary's plain parts: name patterns and bounds, job and run states, run ids, task names,
the Celery call an imported entry sends and a stored job's spec. No I/O, and no pydantic: beat
and the worker read these without loading the validated models of models.py (~10 MB a process).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from ductape_jobs import timing
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


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What to run, where, how often: a stored job's request part (changed only by an update).

    A plain dataclass, so the worker reads a run's spec without pydantic: what it holds was checked
    when the job was scheduled (JobRequest, planning), and ``__post_init__`` checks again what a
    damaged record could get wrong, raising ValueError (beat and the worker then set the job
    aside). Pydantic validates it inside a ``JobRecord`` (and forbids unknown fields there).
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    env: str
    product_tag: str
    event: str
    retries: int
    timeout_s: int | None = None  # None in records written before timeouts: the settings' default
    input: dict[str, Any]
    app: str | None = None
    cache: str | None = None
    start_ms: int = 0
    rule: dict[str, Any] | None = None  # timing.Rule as a dict
    redact_paths: list[list[str | int]] = field(default_factory=list)
    # With session values: ``input`` holds them masked, ``sealed`` holds the real input encrypted
    # under the session type's secret, and ``input_digest`` an HMAC of it (dedupe, cache keys).
    session_tag: str | None = None
    sealed: str | None = None
    input_digest: str | None = None
    created_ms: int
    celery: CeleryCall | None = None  # an imported beat_schedule entry's own task (else our handler)
    key: str | None = None  # JobRequest.key: the job's key index entry names it (keys.key_index)
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if _usual(self):
            return
        check_strings(self, _SPEC_STRINGS)
        check_whole(self, _SPEC_INTS)
        for name in _SPEC_OPTIONAL_STRINGS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                # never the value: sealed holds a session's values, encrypted
                raise ValueError(f"{name}: expected a string or null, got {type(value).__name__}")
        check_whole(self, ("timeout_s",), optional=True)
        if not isinstance(self.input, dict) or not all(isinstance(k, str) for k in self.input):
            raise ValueError(f"input: expected an object, got {shown(self.input)}")
        check_rule_and_call(self)
        paths = self.redact_paths
        if not isinstance(paths, list) or not all(
            isinstance(path, list)
            and all(isinstance(step, str | int) and not isinstance(step, bool) for step in path)
            for path in paths
        ):
            raise ValueError(f"redact_paths: expected a list of key paths, got {shown(paths)}")

    @classmethod
    def of_fields(cls, data: dict[str, Any]) -> JobSpec:
        """``JobSpec(**data)``; when ``data`` names every field (what jobfields reads, on every
        run), made without the frozen ``__init__``'s ``object.__setattr__`` per field."""
        if data.keys() != _SPEC_FIELDS:
            return cls(**data)
        spec = object.__new__(cls)
        spec.__dict__.update(data)
        spec.__post_init__()
        return spec

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """A spec stored as JSON (the layout before jobfields); ValueError when it is not one."""
        return cls(**stored_fields(cls, text, "job spec"))

    def timing_rule(self) -> timing.Rule | None:
        """The repeat rule, or None for a one-off job."""
        return None if self.rule is None else timing.Rule(**self.rule)

    def fingerprint(self) -> str:
        """What makes two recurring jobs the same schedule (docs/design.md section 4)."""
        same = {name: getattr(self, name) for name in _FINGERPRINTED}
        blob = json.dumps(same, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


_SPEC_FIELDS = {f.name for f in fields(JobSpec)}
_SPEC_STRINGS = ("env", "product_tag", "event")
_SPEC_INTS = ("retries", "created_ms", "start_ms")
_SPEC_OPTIONAL_STRINGS = ("app", "cache", "session_tag", "sealed", "input_digest", "key", "idempotency_key")
_TEXT_OR_NONE, _WHOLE_OR_NONE = {str, type(None)}, {int, type(None)}


def _usual(spec: JobSpec) -> bool:
    """Whether every field has its usual type, asked in one pass (a worker reads a spec on every
    run); for anything else, JobSpec's checks decide, naming what is wrong."""
    return (
        type(spec.env) is str
        and type(spec.product_tag) is str
        and type(spec.event) is str
        and type(spec.retries) is int  # not a bool either
        and type(spec.created_ms) is int
        and type(spec.start_ms) is int
        and type(spec.timeout_s) in _WHOLE_OR_NONE
        and type(spec.app) in _TEXT_OR_NONE
        and type(spec.cache) in _TEXT_OR_NONE
        and type(spec.session_tag) in _TEXT_OR_NONE
        and type(spec.sealed) in _TEXT_OR_NONE
        and type(spec.input_digest) in _TEXT_OR_NONE
        and type(spec.key) in _TEXT_OR_NONE
        and type(spec.idempotency_key) in _TEXT_OR_NONE
        and type(spec.input) is dict
        and all(type(k) is str for k in spec.input)
        and (spec.rule is None or type(spec.rule) is dict)
        and spec.celery is None  # a dict (JSON's) is made a CeleryCall by the checks
        and type(spec.redact_paths) is list
        and not spec.redact_paths
    )


# A stored identity key is this JSON's hash: the same fields, dumped the same way, for good.
_FINGERPRINTED = ("env", "product_tag", "event", "app", "input", "rule", "input_digest")


# -- the checks of a record read back (JobSpec here, brief.JobBrief): ValueError names the field --


def check_strings(record: object, names: tuple[str, ...]) -> None:
    """Each of ``names`` is a string."""
    for name in names:
        if not isinstance(getattr(record, name), str):
            raise ValueError(f"{name}: expected a string, got {shown(getattr(record, name))}")


def check_whole(record: object, names: tuple[str, ...], optional: bool = False) -> None:
    """Each of ``names`` is a whole number (not a bool), or None when ``optional``."""
    for name in names:
        value = getattr(record, name)
        if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool)):
            continue
        raise ValueError(
            f"{name}: expected a whole number{' or null' if optional else ''}, got {shown(value)}"
        )


def check_rule_and_call(record: Any) -> None:
    """``rule`` is an object or None; ``celery`` a CeleryCall (made from the dict JSON holds) or None."""
    if record.rule is not None and not isinstance(record.rule, dict):
        raise ValueError(f"rule: expected an object or null, got {shown(record.rule)}")
    if isinstance(record.celery, dict):
        object.__setattr__(record, "celery", CeleryCall.of(record.celery))
    elif record.celery is not None and not isinstance(record.celery, CeleryCall):
        raise ValueError(f"celery: expected a Celery call or null, got {shown(record.celery)}")


def stored_fields(cls: type, text: str, what: str) -> dict[str, Any]:
    """The fields of a ``cls`` dataclass stored as JSON (the layout before jobfields), refused
    unless they are exactly its fields: unknown and missing ones named, as pydantic did (a newer
    version's field, a cut record)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"not a {what}: {text[:64]!r}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(data) - names), sorted(required - set(data))
    if unknown or missing:
        raise ValueError(f"not a {what}: unknown fields {unknown}, missing fields {missing}")
    return data


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
