"""ductape-jobs: Ductape's ``job.schedule()`` API on Celery and Redis.

Owns the library every other part uses: request models, occurrence maths, the Redis data model,
sessions, the handler registry and the producer client. Must not import ``workers`` or ``beat``.
"""

from __future__ import annotations

from ductape_jobs.aclient import AsyncDuctape
from ductape_jobs.client import Ductape
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
from ductape_jobs.models import JobRecord, JobRequest, JobStatus, Repeat, RunRecord, RunStatus, ScheduleHandle
from ductape_jobs.registry import RunContext, handler
from ductape_jobs.settings import Settings

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
