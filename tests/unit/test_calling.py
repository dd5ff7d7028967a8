"""Calling handlers within their timeout: sync under a timer signal, async on a kept event loop."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from ductape_jobs.calling import call_handler
from ductape_jobs.errors import JobTimeoutError, RunCancelledError
from ductape_jobs.registry import CancelSignal, Registry, RunContext

CTX = RunContext("j", "j:1", 1, "dev", "p", "e", None, 1, 1)


class Item(BaseModel):
    """A typed input."""

    n: int


def registered(fn: Any) -> Any:
    return Registry().add("p", "e", fn)


def test_a_sync_handler_past_its_timeout_is_interrupted_inside_the_handler() -> None:
    seen: list[str] = []

    def slow(input: dict[str, Any], ctx: RunContext) -> str:
        try:
            time.sleep(30)
        except JobTimeoutError:
            seen.append("raised inside")
            raise
        return "late"

    before = signal.getsignal(signal.SIGALRM)  # pytest-timeout's, when it runs
    outer_s = signal.getitimer(signal.ITIMER_REAL)[0]
    with pytest.raises(JobTimeoutError, match="timed out after 1 s"):
        call_handler(registered(slow), {}, CTX, timeout_s=1)
    assert seen == ["raised inside"]
    assert signal.getsignal(signal.SIGALRM) is before  # the previous handler is back
    left_s = signal.getitimer(signal.ITIMER_REAL)[0]
    assert (left_s == 0) if outer_s == 0 else (0 < left_s < outer_s)  # and its timer goes on


def test_the_timer_still_fires_after_someone_else_replaced_our_signal_handler() -> None:
    # Ours stays installed between runs; a library that installs its own in between must not
    # leave the next run without its timeout, nor lose its handler to ours.
    def slow(input: dict[str, Any], ctx: RunContext) -> None:
        time.sleep(30)

    def theirs(signum: int, frame: object) -> None:
        raise AssertionError("their handler ran in place of the job's timeout")

    before = signal.getsignal(signal.SIGALRM)
    try:
        assert call_handler(registered(lambda input, ctx: "ok"), {}, CTX, timeout_s=5) == "ok"
        signal.signal(signal.SIGALRM, theirs)
        with pytest.raises(JobTimeoutError, match="timed out after 1 s"):
            call_handler(registered(slow), {}, CTX, timeout_s=1)
        assert signal.getsignal(signal.SIGALRM) is theirs
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        assert call_handler(registered(lambda input, ctx: "ok"), {}, CTX, timeout_s=5) == "ok"
        assert signal.getsignal(signal.SIGALRM) is signal.SIG_IGN  # an ignored signal stays ignored
    finally:
        signal.signal(signal.SIGALRM, before)


def test_an_async_handler_is_awaited_with_its_typed_input_on_a_loop_kept_between_runs() -> None:
    loops: list[object] = []

    async def double(input: Item, ctx: RunContext) -> int:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return input.n * 2

    handler = registered(double)
    assert handler.is_async
    assert [call_handler(handler, {"n": n}, CTX, timeout_s=5) for n in (1, 2)] == [2, 4]
    assert loops[0] is loops[1]


def test_an_async_handler_past_its_timeout_fails_but_its_own_timeouts_are_its_own() -> None:
    async def slow(input: dict[str, Any], ctx: RunContext) -> None:
        await asyncio.sleep(30)

    async def own(input: dict[str, Any], ctx: RunContext) -> None:
        raise TimeoutError("the mail server timed out")

    with pytest.raises(JobTimeoutError, match="timed out after 1 s"):
        call_handler(registered(slow), {}, CTX, timeout_s=1)
    with pytest.raises(TimeoutError, match="mail server") as err:
        call_handler(registered(own), {}, CTX, timeout_s=5)
    assert not isinstance(err.value, JobTimeoutError)


def test_off_the_main_thread_a_sync_handler_runs_without_a_timer() -> None:
    got: list[object] = []

    def quick(input: dict[str, Any], ctx: RunContext) -> str:
        return "ok"

    thread = threading.Thread(
        target=lambda: got.append(call_handler(registered(quick), {}, CTX, timeout_s=1))
    )
    thread.start()
    thread.join(10)
    assert got == ["ok"]


def _context() -> RunContext:
    return RunContext("j", "j:1", 1, "dev", "p", "e", None, 1, 1)


def test_a_sync_handler_sees_a_cancel_through_its_context() -> None:
    ctx = _context()
    seen: list[bool] = []

    def looping(input: dict[str, Any], ctx: RunContext) -> str:
        seen.append(ctx.cancelled())
        ctx.check_cancelled()  # not cancelled yet: nothing happens
        ctx.cancel_signal.set()  # what the heartbeat does when RENEW_RUN says 'cancelled'
        seen.append(ctx.cancelled())
        ctx.check_cancelled()
        return "not reached"

    with pytest.raises(RunCancelledError, match="run j:1 was cancelled"):
        call_handler(registered(looping), {}, ctx, 30)
    assert seen == [False, True]


def test_an_async_handler_is_interrupted_at_its_next_await_when_cancelled_from_another_thread() -> None:
    ctx = _context()

    async def waiting(input: dict[str, Any], ctx: RunContext) -> str:
        threading.Timer(0.05, ctx.cancel_signal.set).start()  # the heartbeat's thread
        await asyncio.sleep(30)
        return "not reached"

    with pytest.raises(RunCancelledError):  # interrupted: its sleep would return "not reached"
        call_handler(registered(waiting), {}, ctx, 30)
    # The thread's kept loop still runs the next handler normally.
    assert call_handler(registered(_async_ok), {}, _context(), 30) == "ok"


async def _async_ok(input: dict[str, Any], ctx: RunContext) -> str:
    await asyncio.sleep(0)
    return "ok"


def test_a_cancel_signal_calls_its_callbacks_once_and_a_late_one_at_once() -> None:
    cancel = CancelSignal()
    calls: list[str] = []
    forget = cancel.on_set(lambda: calls.append("kept"))
    cancel.on_set(lambda: calls.append("forgotten"))()
    forget_early = cancel.on_set(lambda: calls.append("early"))
    assert not cancel.is_set() and calls == []
    cancel.set()
    cancel.set()  # a second renewal saying 'cancelled': nothing more
    assert cancel.is_set() and calls == ["kept", "early"]
    cancel.on_set(lambda: calls.append("late"))
    assert calls == ["kept", "early", "late"]
    forget()  # removing a called callback is harmless
    forget_early()


def test_a_handler_is_known_async_or_not_at_registration() -> None:
    assert registered(_async_ok).is_async
    assert not registered(lambda input, ctx: None).is_async


def test_an_async_handlers_own_cancellation_is_not_taken_for_a_cancel() -> None:
    async def cancels_itself(input: dict[str, Any], ctx: RunContext) -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)
        return "not reached"

    with pytest.raises(asyncio.CancelledError):
        call_handler(registered(cancels_itself), {}, _context(), 30)
