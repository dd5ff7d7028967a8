"""Calling a handler within its job's timeout: a sync handler under a timer signal, an ``async def``
handler awaited on its thread's own event loop. Either way the timeout raises ``JobTimeoutError``
inside the handler, a failed attempt like any other. A cancel reaches an async handler at its
next ``await`` as ``RunCancelledError`` (a sync one sees it through ``ctx.cancelled()``)."""

from __future__ import annotations

import _signal
import asyncio
import os
import signal
import threading
import time
from collections.abc import Coroutine
from types import FrameType
from typing import Any

from ductape_jobs.errors import JobTimeoutError, RunCancelledError
from ductape_jobs.registry import Handler, RunContext

_local = threading.local()


def call_handler(handler: Handler, given: dict[str, Any], ctx: RunContext, timeout_s: int) -> Any:
    """``handler(given, ctx)``, awaited when it is ``async def``, interrupted after ``timeout_s``."""
    if handler.is_async:
        return _loop().run(_awaited(handler(given, ctx), timeout_s, ctx))
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread receives signals: elsewhere (a ``threads`` pool) only Celery's
        # hard limit applies.
        return handler(given, ctx)
    # Armed and disarmed around the call, not by a context manager (~2 us a run).
    armed = _arm(timeout_s)
    try:
        return handler(given, ctx)
    finally:
        _disarm(armed)


def _timed_out(timeout_s: int) -> JobTimeoutError:
    return JobTimeoutError(
        f"timed out after {timeout_s} s (the job's timeout; schedule it with a larger timeout)"
    )


async def _awaited(coro: Coroutine[Any, Any, Any], timeout_s: int, ctx: RunContext) -> Any:
    scope = asyncio.timeout(timeout_s)
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert task is not None
    # The cancel signal is set on the heartbeat's thread: the task is cancelled on its own loop.
    forget = ctx.cancel_signal.on_set(lambda: _cancel_soon(loop, task))
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise _timed_out(timeout_s) from None
        raise  # the handler's own TimeoutError
    except asyncio.CancelledError:
        if ctx.cancelled():
            raise RunCancelledError(f"run {ctx.run_id} was cancelled") from None
        raise
    finally:
        forget()


def _cancel_soon(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    loop.call_soon_threadsafe(task.cancel)


def _loop() -> asyncio.Runner:
    """This thread's event loop, kept between runs (a forked pool process makes its own)."""
    runner: asyncio.Runner | None = getattr(_local, "runner", None)
    if runner is None or getattr(_local, "pid", 0) != os.getpid():
        runner = asyncio.Runner()
        _local.runner, _local.pid = runner, os.getpid()
    return runner


_armed_s: list[int] = []  # the timeouts of the alarms armed now (main thread only)


def _expire(_signum: int, _frame: FrameType | None) -> None:
    if _armed_s:
        raise _timed_out(_armed_s[-1])


def _arm(timeout_s: int) -> tuple[Any, float, float, float]:
    """Raise JobTimeoutError in this (main) thread after ``timeout_s``; what ``_disarm`` needs:
    the SIGALRM handler before, and the timer it stopped with when it was stopped."""
    # Our handler stays installed in place of the default one (a pool process's), a syscall less
    # per run; anyone else's is put back after the run. Asked of _signal: signal.getsignal turns
    # its answer into an enum when it can, by catching a ValueError (~5 us a run, for a function).
    previous = _signal.getsignal(signal.SIGALRM)
    if previous is not _expire:
        signal.signal(signal.SIGALRM, _expire)
    outer_s, outer_every_s = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    _armed_s.append(timeout_s)
    return previous, outer_s, outer_every_s, time.monotonic()


def _disarm(armed: tuple[Any, float, float, float]) -> None:
    """Stop the timer ``_arm`` started, and put back the handler and the timer it found."""
    previous, outer_s, outer_every_s, started = armed
    signal.setitimer(signal.ITIMER_REAL, 0)
    _armed_s.pop()
    if previous not in (_expire, signal.SIG_DFL, None):
        signal.signal(signal.SIGALRM, previous)
    if outer_s:  # someone else's timer (a test runner's, say) was running: it goes on
        left_s = max(outer_s - (time.monotonic() - started), 0.001)
        signal.setitimer(signal.ITIMER_REAL, left_s, outer_every_s)
