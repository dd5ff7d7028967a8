"""ductape-jobs: Ductape's ``job.schedule()`` API on Celery and Redis.

Owns the library every other part uses: request models, occurrence maths, the Redis data model,
sessions, the handler registry and the producer client. Must not import ``workers`` or ``beat``.

The public names below are loaded on first use (PEP 562), not when the package is: a worker's
handler module does ``from ductape_jobs import handler``, and must not bring in the producer
clients (sync and async) it never calls (a worker's memory is a bench figure; tests/unit/
test_layers.py checks what a worker loads).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ductape_jobs.errors import (
    BackendUnavailableError,
    DuctapeError,
    HandlerError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    JobValidationError,
    NotReplicatedError,
    RecordUnreadableError,
    RetiredKeyError,
    RunCancelledError,
    SessionError,
    UnknownEventError,
)

if TYPE_CHECKING:
    from ductape_jobs.aclient import AsyncDuctape
    from ductape_jobs.client import Ductape
    from ductape_jobs.models import JobRecord, JobRequest, Repeat, RunRecord, ScheduleHandle
    from ductape_jobs.registry import RunContext, handler
    from ductape_jobs.settings import Settings
    from ductape_jobs.terms import JobStatus, RunStatus

_LAZY = {
    "AsyncDuctape": "ductape_jobs.aclient",
    "Ductape": "ductape_jobs.client",
    **dict.fromkeys(
        ("JobRecord", "JobRequest", "Repeat", "RunRecord", "ScheduleHandle"),
        "ductape_jobs.models",
    ),
    "JobStatus": "ductape_jobs.terms",
    "RunStatus": "ductape_jobs.terms",
    "RunContext": "ductape_jobs.registry",
    "handler": "ductape_jobs.registry",
    "Settings": "ductape_jobs.settings",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ductape_jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AsyncDuctape",
    "BackendUnavailableError",
    "Ductape",
    "DuctapeError",
    "HandlerError",
    "JobNotFoundError",
    "JobRecord",
    "JobRequest",
    "JobStateError",
    "JobStatus",
    "JobTimeoutError",
    "JobValidationError",
    "NotReplicatedError",
    "RecordUnreadableError",
    "Repeat",
    "RetiredKeyError",
    "RunCancelledError",
    "RunContext",
    "RunRecord",
    "RunStatus",
    "ScheduleHandle",
    "SessionError",
    "Settings",
    "UnknownEventError",
    "handler",
]
