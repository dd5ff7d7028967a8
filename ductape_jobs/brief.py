"""A job's brief: what beat needs to time its runs and send their messages, without the input.

Read from the job hash's brief fields (jobfields.BRIEF: a few hundred bytes at most, about
1.5 KiB), so beat's reads (READ_DUE, the lost-run sweep) never carry a job's input, which may be
256 KiB plus a sealed copy. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ductape_jobs import timing
from ductape_jobs.models import CeleryCall, JobSpec
from ductape_jobs.sessions import redact
from ductape_jobs.tracing import TRACEPARENT

ARGSREPR_MAX = 1_024  # Celery's argsrepr (shown by Flower) is the input's repr cut to this length


class JobBrief(BaseModel):
    """Where a job's runs go, when they fall due, and how Flower shows their input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    traceparent: str | None = Field(default=None, pattern=TRACEPARENT.pattern)

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
