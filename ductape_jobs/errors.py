"""Every error the library raises: one base class and a small family under it.

Each also inherits the matching builtin so callers can catch either. Messages name the
field, show the offending value and say what to do; they never carry a secret.
"""

from __future__ import annotations

import sys
from typing import Any, cast


class DuctapeError(Exception):
    """Base class of every error raised by ductape-jobs."""


class JobValidationError(DuctapeError, ValueError):
    """A request was refused before anything was written or sent."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class SessionError(JobValidationError):
    """A session token or a $Session{...} placeholder could not be used."""


class RetiredKeyError(SessionError):
    """Sealed data names a key no longer in its session type's key ring: it can never be opened."""


class UnknownEventError(JobValidationError):
    """No worker has registered a handler for the (product_tag, event) pair."""


class JobNotFoundError(DuctapeError, LookupError):
    """No job with that id exists under this key prefix."""


class JobStateError(DuctapeError, ValueError):
    """The operation does not apply to the job in its current state."""


class RecordUnreadableError(DuctapeError, ValueError):
    """A stored record could not be read back (damaged, or written by an incompatible version)."""


class BackendUnavailableError(DuctapeError, ConnectionError):
    """Redis (or the broker) could not be reached within the configured time."""


class NotReplicatedError(BackendUnavailableError):
    """A write reached the primary but not DUCTAPE_WAIT_REPLICAS replicas in time: a failover
    could lose it (it is not undone; retrying is safe)."""


class HandlerError(DuctapeError):
    """A handler raised; carried into the run record and the dead-letter store."""


def shown(value: object, limit: int = 80) -> str:
    """A caller's value for a message: its repr, cut to ``limit``; a huge number by its size."""
    # repr() of an int past 4,300 digits raises ValueError (CPython's conversion limit), and a
    # message must never fail while it names the value.
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * 0.30103) + 1
        return f"{'-' if value < 0 else ''}<a number of about {digits} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JobTimeoutError(HandlerError, TimeoutError):
    """A handler ran past its job's ``timeout``: the attempt failed and is retried like any other."""


class RunCancelledError(DuctapeError):
    """The run was cancelled (``cancel``, ``cancel_run``): raised in its handler by
    ``ctx.check_cancelled()``; the run ends ``cancelled`` and is never retried."""


def loaded_pydantic(name: str) -> type[Any] | None:
    """``pydantic.<name>`` (ValidationError, BaseModel) if this process loaded pydantic, else None:
    asked without loading it (~10 MB a process, which beat and the worker never need): what only
    pydantic makes (its errors, a handler's model) cannot exist where nothing loaded it."""
    pydantic = sys.modules.get("pydantic")
    return None if pydantic is None else cast("type[Any]", getattr(pydantic, name))


def validation_error(exc: BaseException) -> bool:
    """Whether ``exc`` is pydantic's ValidationError (loaded_pydantic)."""
    kind = loaded_pydantic("ValidationError")
    return kind is not None and isinstance(exc, kind)
