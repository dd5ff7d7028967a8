"""Handlers by event tag: the ``@handler`` decorator and loading the modules that use it."""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from ductape_jobs.errors import JobValidationError, RunCancelledError, loaded_pydantic
from ductape_jobs.terms import SLUG, SLUG_FIX, check_task_namespace, ms_to_datetime, task_name

if TYPE_CHECKING:
    from pydantic import BaseModel

HandlerFn = Callable[..., Any]


class CancelSignal:
    """Whether a run was cancelled: set from the worker's heartbeat thread (RENEW_RUN's reply),
    read by the handler through its ``RunContext``; callbacks let an async handler be interrupted.

    A flag under a lock, not a ``threading.Event`` (a Condition and its locks made for every run):
    nobody waits on it, and reading a bool needs no lock.
    """

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        """Mark the run cancelled and call the callbacks (once)."""
        with self._lock:
            if self._set:
                return
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        """Whether the run was cancelled."""
        return self._set

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the run is cancelled (now, if it is); returns its remover."""
        with self._lock:
            if not self._set:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass(frozen=True)
class RunContext:
    """What a handler learns about the run it is executing."""

    job_id: str
    run_id: str
    attempt: int
    env: str
    product_tag: str
    event: str
    app: str | None
    scheduled_ms: int
    max_attempts: int
    cancel_signal: CancelSignal = field(default_factory=CancelSignal, repr=False, compare=False)

    def cancelled(self) -> bool:
        """Whether the run was cancelled (``cancel``/``cancel_run``); the worker learns it within
        a heartbeat (``heartbeat.CANCEL_CHECK_S``)."""
        return self.cancel_signal.is_set()

    def check_cancelled(self) -> None:
        """Raise ``RunCancelledError`` when the run was cancelled: call it between steps of work."""
        if self.cancelled():
            raise RunCancelledError(f"run {self.run_id} was cancelled")

    @property
    def scheduled_at(self) -> datetime:
        """The run's nominal time as an aware UTC datetime."""
        when = ms_to_datetime(self.scheduled_ms)
        assert when is not None
        return when


@dataclass(frozen=True)
class Handler:
    """One registered handler and the input model it asks for, if any."""

    product_tag: str
    event: str
    fn: HandlerFn
    input_model: type[BaseModel] | None
    # An ``async def`` handler: the worker awaits what it returns. Asked once (inspect's answer
    # costs a few microseconds, on every run).
    is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    @property
    def pair(self) -> str:
        """``product_tag/event``, as workers publish it."""
        return f"{self.product_tag}/{self.event}"

    @property
    def task_name(self) -> str:
        """The Celery task name (what Flower lists)."""
        return task_name(self.product_tag, self.event)

    def __call__(self, input: dict[str, Any], ctx: RunContext) -> Any:
        value: Any = input if self.input_model is None else self.input_model.model_validate(input)
        return self.fn(value, ctx)


@dataclass
class Registry:
    """Handlers keyed by (product_tag, event)."""

    handlers: dict[tuple[str, str], Handler] = field(default_factory=dict)

    def add(self, product_tag: str, event: str, fn: HandlerFn) -> Handler:
        """Register fn; registering a different function for the same pair is an error."""
        for name, value in (("product_tag", product_tag), ("event", event)):
            # Task names are one per pair only for slugs (terms.task_name), as schedule() takes.
            if not isinstance(value, str) or not re.fullmatch(SLUG, value):
                raise JobValidationError(f"handler.{name}", f"{value!r} is not a valid tag; {SLUG_FIX}")
        check_task_namespace(product_tag, "handler.product_tag")
        existing = self.handlers.get((product_tag, event))
        if existing is not None and existing.fn is not fn:
            raise JobValidationError(
                "handler", f"{product_tag}/{event} already has handler {existing.fn.__qualname__}"
            )
        entry = Handler(product_tag, event, fn, _input_model(fn))
        self.handlers[(product_tag, event)] = entry
        return entry

    def get(self, product_tag: str, event: str) -> Handler | None:
        """The handler for the pair, or None."""
        return self.handlers.get((product_tag, event))

    def __iter__(self) -> Any:
        return iter(self.handlers.values())

    def __len__(self) -> int:
        return len(self.handlers)


default_registry = Registry()


def handler(
    event: str, *, product_tag: str, registry: Registry | None = None
) -> Callable[[HandlerFn], HandlerFn]:
    """Register ``fn(input, ctx)`` as the handler of ``event`` for ``product_tag``."""

    def register(fn: HandlerFn) -> HandlerFn:
        (registry or default_registry).add(product_tag, event, fn)
        return fn

    return register


def load_handlers(modules: Iterable[str], registry: Registry | None = None) -> Registry:
    """Import the handler modules (``DUCTAPE_HANDLERS``) and return the registry they filled."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise JobValidationError(
                "settings.handlers", f"cannot import handler module {name!r}: {exc}; fix DUCTAPE_HANDLERS"
            ) from exc
    return registry or default_registry


def _input_model(fn: HandlerFn) -> type[BaseModel] | None:
    """The pydantic model a handler declares for its first parameter, if any."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except (NameError, TypeError):
        return None
    hint = hints.get(params[0].name)
    model = loaded_pydantic("BaseModel")  # a module declaring a model has loaded it; beat has not
    if model and inspect.isclass(hint) and issubclass(hint, model):
        return cast("type[BaseModel]", hint)
    return None
