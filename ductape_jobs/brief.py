"""A job's brief: what beat needs to time its runs and send their messages, without the input.

Read from the job hash's brief fields (jobfields.BRIEF: a few hundred bytes at most, about
1.5 KiB), so beat's reads (READ_DUE, the lost-run sweep) never carry a job's input, which may be
256 KiB plus a sealed copy. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ductape_jobs import timing
from ductape_jobs.errors import shown
from ductape_jobs.sessions import redact
from ductape_jobs.terms import (
    CeleryCall,
    JobSpec,
    check_rule_and_call,
    check_strings,
    check_whole,
    stored_fields,
)
from ductape_jobs.tracing import TRACEPARENT

ARGSREPR_MAX = 1_024  # Celery's argsrepr (shown by Flower) is the input's repr cut to this length


@dataclass(frozen=True, slots=True)
class JobBrief:
    """Where a job's runs go, when they fall due, and how Flower shows their input.

    A plain dataclass, so beat reads briefs without pydantic: what it holds was checked when the
    job was scheduled (JobRequest), and ``__post_init__`` checks again what a damaged record could
    get wrong, raising ValueError (beat then sets the job aside).
    """

    env: str
    product_tag: str
    event: str
    # timing.Rule as a dict, as in JobSpec; its overlap policy is what beat hands CLAIM_DUE
    rule: dict[str, Any] | None = None
    argsrepr: str = "{}"
    timeout_s: int | None = None  # the job's timeout (its messages' hard limit); None: the default
    celery: CeleryCall | None = None  # an imported beat_schedule entry: its task, not our handler
    # The W3C traceparent of the span that scheduled the job (55 characters, no baggage, no
    # tracestate): beat links a recurring run's trace to it, and sends a one-off in its trace.
    traceparent: str | None = None

    def __post_init__(self) -> None:
        check_strings(self, ("env", "product_tag", "event", "argsrepr"))
        check_whole(self, ("timeout_s",), optional=True)
        check_rule_and_call(self)
        traceparent = self.traceparent
        if traceparent is not None and not (
            isinstance(traceparent, str) and TRACEPARENT.fullmatch(traceparent)
        ):
            raise ValueError(f"traceparent: not a W3C traceparent: {shown(traceparent)}")

    @classmethod
    def from_json(cls, text: str) -> JobBrief:
        """A brief stored as JSON (the layout before jobfields); ValueError when it is not one."""
        return cls(**stored_fields(cls, text, "job brief"))

    @classmethod
    def of(
        cls, spec: JobSpec, input: dict[str, Any] | None = None, traceparent: str | None = None
    ) -> JobBrief:
        """The brief of a spec (``input`` stands in for ``spec.input``, as in MessageBuilder.build)."""
        return cls(
            traceparent=traceparent,
            env=spec.env,
            product_tag=spec.product_tag,
            event=spec.event,
            rule=spec.rule,
            argsrepr=argsrepr(spec, input),
            timeout_s=spec.timeout_s,
            celery=spec.celery,
        )

    def timing_rule(self) -> timing.Rule | None:
        """The repeat rule, or None for a one-off job."""
        return None if self.rule is None else timing.Rule(**self.rule)


def argsrepr(spec: JobSpec, input: dict[str, Any] | None = None) -> str:
    """The input as Flower shows it: session values masked, cut to ARGSREPR_MAX characters."""
    shown = spec.input if input is None else input
    if spec.redact_paths:
        shown = redact(shown, [tuple(p) for p in spec.redact_paths])
    return repr(shown)[:ARGSREPR_MAX]
