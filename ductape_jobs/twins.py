"""The batch shortcut of ``schedule_many``: requests that differ only in ``input`` share one plan.

A dict request whose fields other than ``input`` equal, value and type, those of a request
planned earlier in the batch (a one-off or undeduplicated job without a session) is a *twin* of
that request's *shape*: only its input is checked again, and its CREATE_JOBS row is the shape's
row with the job id, the input and its argsrepr in the packed spec fields, and the run's id and
message replaced. Anything else goes the long way (planning.plan_job), which gives the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ductape_jobs import jobfields, ops, tracing
from ductape_jobs.brief import ARGSREPR_MAX
from ductape_jobs.errors import JobValidationError
from ductape_jobs.keys import Keys
from ductape_jobs.models import ScheduleHandle
from ductape_jobs.planning import check_input, handle_of
from ductape_jobs.records import Message, NewJob
from ductape_jobs.rows import CreateJobsRow
from ductape_jobs.sessions import OPENER
from ductape_jobs.settings import Settings
from ductape_jobs.terms import run_id_for
from ductape_jobs.wire import MessageBuilder

ShapeKey = tuple[Any, ...]


def shape_key(raw: object) -> ShapeKey | None:
    """A dict request's fields other than ``input``, with their types (``1`` is not ``True``);
    None when a value can't be compared cheaply (a nested dict such as ``repeat``)."""
    if type(raw) is not dict:
        return None
    key = tuple([(name, type(value), value) for name, value in raw.items() if name != "input"])
    try:
        hash(key)
    except TypeError:
        return None
    return key


class Shapes:
    """The shapes planned so far in one batch, by shape key."""

    def __init__(
        self, keys: Keys, settings: Settings, new_job_id: Callable[[], str], traceparent: str | None = None
    ) -> None:
        self._keys = keys
        self._traceparent = traceparent  # the span scheduling the batch (tracing), in each brief
        self._settings = settings
        self._new_job_id = new_job_id
        self._shapes: dict[ShapeKey, Shape | None] = {}

    def twin(self, key: ShapeKey | None, raw: object) -> Twin | None:
        """The request as a twin of a shape planned before, or None for the long way."""
        shape = self._shapes.get(key) if key is not None else None
        if shape is None or not isinstance(raw, dict):
            return None
        return shape.twin(raw, self._settings, self._new_job_id)

    def learn(self, key: ShapeKey | None, plan: NewJob) -> None:
        """Remember a request planned the long way as the shape of its key (the first one only)."""
        if key is not None and key not in self._shapes:
            self._shapes[key] = Shape.of(plan, self._keys, self._traceparent)


@dataclass(frozen=True)
class Twin:
    """A request accepted because it matches a shape: its own job id and input."""

    shape: Shape
    job_id: str
    input: dict[str, Any]
    input_json: str

    def row(self, now_ms: int, messages: MessageBuilder, built: list[Message] | None = None) -> CreateJobsRow:
        """Its CREATE_JOBS row (its run's message also appended to ``built``)."""
        return self.shape.row(self, now_ms, messages, built)

    def handle(self) -> ScheduleHandle:
        """What ``schedule()`` hands back for it."""
        return ScheduleHandle.model_validate({"job_id": self.job_id, **self.shape.shown})


@dataclass(frozen=True)
class Shape:
    """A planned request whose plan does not depend on its input (a one-off or undeduplicated
    job without a session), shared by the batch's requests that differ from it only in input."""

    plan: NewJob
    template: CreateJobsRow
    spec_head: str  # its packed spec fields but the input's (jobfields.pack_head)
    shown: dict[str, Any]  # the handle's fields but job_id
    traceparent: str | None  # the span scheduling the batch (tracing)

    @classmethod
    def of(cls, plan: NewJob, keys: Keys, traceparent: str | None = None) -> Shape | None:
        """The plan as a shape, or None when its plan depends on its input."""
        spec = plan.spec
        if plan.dedupe or spec.session_tag is not None or spec.redact_paths or spec.idempotency_key:
            return None
        shown = handle_of(plan).model_dump(exclude={"job_id"})
        row = ops.create_row(keys, plan, traceparent)
        return cls(plan, row, jobfields.pack_head(spec, traceparent), shown, traceparent)

    def twin(self, raw: Mapping[str, Any], settings: Settings, new_job_id: Callable[[], str]) -> Twin | None:
        """The request as a twin of this shape if its input passes; None sends it the long way
        (which raises the same error a lone request would get)."""
        given = raw.get("input", {})
        if type(given) is not dict:
            return None
        try:
            input_json = check_input(given, settings)
        except JobValidationError:
            return None
        if OPENER in input_json:  # a placeholder without a session: the long way refuses it
            return None
        return Twin(self, new_job_id(), given, input_json)

    def row(
        self, twin: Twin, now_ms: int, messages: MessageBuilder, built: list[Message] | None = None
    ) -> CreateJobsRow:
        """A twin's CREATE_JOBS row (its run's message also appended to ``built``)."""
        plan, template = self.plan, self.template
        shown = repr(twin.input)[:ARGSREPR_MAX]  # as argsrepr() has it: a shape has no session values
        run_id, message, traced = template.run_id, template.message, template.traceparent
        if plan.run_id is not None and plan.nominal_ms is not None:
            run_id = run_id_for(twin.job_id, plan.nominal_ms)
            if plan.spec.rule is None:
                made = messages.build(run_id, plan.spec, plan.nominal_ms, now_ms, shown=shown)
            else:  # a schedule's first run starts its own trace, linked (as flows.traced_build)
                with tracing.span("ductape.release", self.traceparent, link=True, run_id=run_id):
                    made = messages.build(run_id, plan.spec, plan.nominal_ms, now_ms, shown=shown)
            if built is not None:
                built.append(made)
            message, traced = made.payload, made.traceparent
        # By position, as the fields are declared: a twin's row is built once per request, and
        # _replace() costs twice as much (test_batches checks the rows equal the long way's).
        return CreateJobsRow(
            twin.job_id,
            self.spec_head + jobfields.SEP + jobfields.pack_input(twin.input_json, shown)
            if twin.input
            else self.spec_head,
            template.status,
            template.recurring,
            template.next_run_ms,
            template.anchor_ms,
            template.runs_done,
            run_id,
            template.nominal_ms,
            template.due_ms,
            template.fp_keys,
            template.queue_key,
            message,
            template.idem_key,  # '' (a one-off with an idempotency key is no shape)
            template.idem_ttl_ms,
            traced,
        )
