"""The worker's runner driven with scripted store replies: what it does for each BEGIN_RUN verdict,
which FINISH_RUN outcome each handler result becomes, the cache, the timeout, Redis going away,
and the heartbeat letting go of a lease it lost. Pure: the clock is an argument. The same runner
over real Redis: tests/integration/test_lifecycle.py; under real workers: tests/e2e."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from ductape_jobs.errors import BackendUnavailableError, RetiredKeyError, RunCancelledError
from ductape_jobs.heartbeat import Heartbeat
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.records import Started
from ductape_jobs.registry import Registry, RunContext
from ductape_jobs.runner import Outcome, Runner, cache_digest, owner_prefix
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec
from tests.scripted import ScriptedStore

NOW = 1_700_000_000_000
RUN = "J:1699999990000"
SETTINGS = Settings(key_prefix="unit", caches={"short": {"ttl_ms": 60_000}})
seen: list[tuple[dict[str, Any], RunContext]] = []


class Order(BaseModel):
    order: int


def pay(given: dict[str, Any], ctx: RunContext) -> Any:
    seen.append((given, ctx))
    if given.get("fail"):
        raise ValueError(f"card declined for {given['order']}")
    if given.get("retired"):
        raise RetiredKeyError("input", "sealed under key k0, which left the ring")
    if given.get("sleep"):
        time.sleep(given["sleep"])  # past its timeout: the timer interrupts it
    return {"paid": given["order"]}


def typed(given: Order, ctx: RunContext) -> Any:
    return {"order": given.order}


def odd(given: dict[str, Any], ctx: RunContext) -> Any:
    return {"at": datetime(2030, 1, 1, tzinfo=UTC), "pair": (1, "é"), 3: None}


REGISTRY = Registry()
REGISTRY.add("billing", "pay", pay)
REGISTRY.add("billing", "typed", typed)
REGISTRY.add("billing", "odd", odd)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    seen.clear()


def spec(**fields: Any) -> JobSpec:
    request = {"env": "dev", "product_tag": "billing", "event": "pay", "input": {"order": 7}, **fields}
    return plan_job(JobRequest.parse(request), SETTINGS, Sessions({}), NOW, "J").spec


def run(s: JobSpec, attempt: int = 1) -> Started:
    return Started("run", attempt=attempt, spec=s, nominal_ms=NOW - 10_000)


def execute(store: ScriptedStore, settings: Settings = SETTINGS, **options: Any) -> Outcome:
    outcome = Runner(store, REGISTRY, settings, lambda: NOW, **options).execute(RUN)
    assert store.done(), f"the runner left scripted calls unmade: {list(store.script)}"
    return outcome


def test_a_result_json_cannot_hold_is_recorded_as_json_dumps_writes_it() -> None:
    # What is not JSON is written as its str(); a tuple as a list, a number key as a string.
    store = ScriptedStore(("begin_run", run(spec(event="odd"))), ("finish_run", True))
    stored = '{"at": "2030-01-01 00:00:00+00:00", "pair": [1, "\\u00e9"], "3": null}'
    assert execute(store) == Outcome("completed", result=json.loads(stored))
    (finish,) = store.args("finish_run")
    assert finish["result_json"] == stored


# -- BEGIN_RUN ----------------------------------------------------------------------------------


def test_a_started_run_calls_the_handler_and_records_its_result() -> None:
    store = ScriptedStore(("begin_run", run(spec(retries=2), attempt=2)), ("finish_run", True))
    assert execute(store) == Outcome("completed", result={"paid": 7})
    (begin,) = store.args("begin_run")
    assert (begin["run_id"], begin["job_id"], begin["now_ms"], begin["lease_ms"]) == (RUN, "J", NOW, 60_000)
    assert begin["owner"].startswith(owner_prefix(os.getpid()))
    (finish,) = store.args("finish_run")
    assert finish == {
        "run_id": RUN,
        "job_id": "J",
        "attempt": 2,
        "now_ms": NOW,
        "outcome": "completed",
        "result_json": '{"paid": 7}',
        "error": "",
        "traceback": "",
        "cached": False,
        "retention_s": SETTINGS.run_retention_s,
        "due_ms": None,
        "wait": True,
    }
    ((given, ctx),) = seen
    assert given == {"order": 7}
    assert (ctx.run_id, ctx.attempt, ctx.max_attempts, ctx.scheduled_ms) == (RUN, 2, 3, NOW - 10_000)


@pytest.mark.parametrize("verdict", ["done", "skip"])
def test_a_run_finished_cancelled_or_gone_is_skipped_untouched(verdict: str) -> None:
    # BEGIN_RUN's 'gone' reaches the runner as 'skip' (ops.worker.begin_run records the vanished run).
    assert execute(ScriptedStore(("begin_run", Started(verdict)))) == Outcome("skipped")
    assert seen == []


@pytest.mark.parametrize(("wait_ms", "retry_in_s"), [(2_500, 2.5), (3_600_000, 60.0)])
def test_a_run_another_delivery_holds_is_looked_at_again_when_its_lease_ends(
    wait_ms: int, retry_in_s: float
) -> None:
    outcome = execute(ScriptedStore(("begin_run", Started("busy", wait_ms=wait_ms))))
    assert outcome == Outcome("busy", retry_in_s=retry_in_s)  # never beyond the ETA horizon
    assert seen == []


def test_the_start_is_written_once_redis_is_back() -> None:
    down = BackendUnavailableError("Redis is unreachable (ConnectionError)")
    store = ScriptedStore(
        ("begin_run", down), ("begin_run", run(spec())), ("finish_run", down), ("finish_run", True)
    )
    assert execute(store).kind == "completed"
    assert len(seen) == 1  # the handler ran once; only the writes were tried again
    first, again = store.args("finish_run")
    assert first == again


# -- FINISH_RUN ---------------------------------------------------------------------------------


def test_a_failure_with_attempts_left_is_retried_after_a_backoff() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(retries=3, input={"order": 7, "fail": 1}), attempt=3)), ("finish_run", True)
    )
    assert execute(store) == Outcome("retry", retry_in_s=4, error="ValueError: card declined for 7")
    (finish,) = store.args("finish_run")
    assert (finish["outcome"], finish["attempt"], finish["due_ms"]) == ("retry", 3, None)
    assert finish["error"] == "ValueError: card declined for 7"
    assert "Traceback" in finish["traceback"] and "card declined" in finish["traceback"]


def test_a_retry_later_than_the_horizon_waits_in_the_due_index() -> None:
    settings = Settings(key_prefix="unit", horizon_ms=1_000)
    store = ScriptedStore(
        ("begin_run", run(spec(retries=3, input={"order": 7, "fail": 1}), attempt=2)), ("finish_run", True)
    )
    assert execute(store, settings) == Outcome("retry", error="ValueError: card declined for 7")
    (finish,) = store.args("finish_run")
    assert (finish["outcome"], finish["due_ms"]) == ("retry_due", NOW + 2_000)


def test_the_last_attempt_failing_fails_the_run() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(retries=1, input={"order": 7, "fail": 1}), attempt=2)), ("finish_run", True)
    )
    assert execute(store) == Outcome("failed", error="ValueError: card declined for 7")
    assert store.args("finish_run")[0]["outcome"] == "failed"


def test_input_the_handler_model_refuses_fails_at_once() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(event="typed", retries=5, input={"order": "x"}))), ("finish_run", True)
    )
    outcome = execute(store)
    assert outcome.kind == "failed" and outcome.error is not None and "ValidationError" in outcome.error
    assert store.args("finish_run")[0]["outcome"] == "failed"


def test_a_run_without_a_handler_here_fails_naming_the_setting() -> None:
    store = ScriptedStore(("begin_run", run(spec(event="refund", retries=5))), ("finish_run", True))
    outcome = execute(store)
    assert outcome.kind == "failed" and outcome.error is not None
    assert "no handler for billing/refund" in outcome.error and "DUCTAPE_HANDLERS" in outcome.error


def test_input_sealed_under_a_retired_key_fails_and_sets_the_job_aside() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(retries=5, input={"order": 7, "retired": 1}))),
        ("finish_run", True),
        ("change_state", ("ok", None)),
    )
    assert execute(store) == Outcome(
        "failed", error="RetiredKeyError: input: sealed under key k0, which left the ring"
    )
    assert store.args("finish_run")[0]["outcome"] == "failed"  # with attempts left: no run could open it
    assert store.args("change_state") == [{"action": "set_aside", "job_id": "J", "now_ms": NOW}]


def test_a_handler_past_its_timeout_is_interrupted_and_retried() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(retries=1, timeout=1, input={"order": 7, "sleep": 30}))), ("finish_run", True)
    )
    outcome = execute(store)
    assert (
        outcome.kind == "retry"
        and outcome.error
        == "JobTimeoutError: timed out after 1 s (the job's timeout; schedule it with a larger timeout)"
    )
    assert store.args("finish_run")[0]["outcome"] == "retry"


def test_a_completion_is_sent_without_waiting_only_when_deferred() -> None:
    store = ScriptedStore(("begin_run", run(spec())), ("finish_run", True))
    assert execute(store, defer_finish=True).kind == "completed"
    assert store.args("finish_run")[0]["wait"] is False
    failing = ScriptedStore(("begin_run", run(spec(input={"order": 7, "fail": 1}))), ("finish_run", True))
    assert execute(failing, defer_finish=True).kind == "failed"
    assert failing.args("finish_run")[0]["wait"] is True  # only 'completed' is safe to send twice


# -- the cache ----------------------------------------------------------------------------------


def test_a_cached_result_is_recorded_without_calling_the_handler() -> None:
    s = spec(cache="short")
    key = ScriptedStore().keys.cache("short", cache_digest(s))
    store = ScriptedStore(("begin_run", run(s)), ("cached_result", '{"paid": 1}'), ("finish_run", True))
    assert execute(store) == Outcome("completed", result={"paid": 1})
    assert seen == []
    assert store.args("cached_result") == [{"key": key}]
    finish = store.args("finish_run")[0]
    assert (finish["cached"], finish["result_json"]) == (True, '{"paid": 1}')


def test_a_cache_miss_runs_the_handler_and_stores_its_result() -> None:
    s = spec(cache="short")
    key = ScriptedStore().keys.cache("short", cache_digest(s))
    store = ScriptedStore(
        ("begin_run", run(s)), ("cached_result", None), ("finish_run", True), ("store_result", None)
    )
    assert execute(store) == Outcome("completed", result={"paid": 7})
    assert store.args("store_result") == [
        {"key": key, "result_json": json.dumps({"paid": 7}), "ttl_ms": 60_000}
    ]


def test_a_failure_is_never_cached() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(cache="short", input={"order": 7, "fail": 1}))),
        ("cached_result", None),
        ("finish_run", True),
    )
    assert execute(store).kind == "failed"


# -- the lease ----------------------------------------------------------------------------------


def test_the_heartbeat_lets_go_of_a_lease_it_lost_and_keeps_one_while_redis_is_down() -> None:
    down = BackendUnavailableError("Redis is unreachable (ConnectionError)")
    store = ScriptedStore(
        ("renew_run", "lost"),  # a: another delivery owns it now
        ("renew_run", down),  # b: not known yet
        ("renew_run", "held"),  # b, once Redis is back
    )
    # its own thread renews hourly
    beat = Heartbeat(store, lease_ms=3_600_000, clock_ms=lambda: NOW, cancel_check_s=3_600)
    beat.hold("a", "owner-a")
    beat.hold("b", "owner-b")
    beat.renew_all()
    beat.renew_all()
    beat.release("b")
    assert store.done()
    assert store.args("renew_run") == [
        {"run_id": "a", "owner": "owner-a", "now_ms": NOW, "lease_ms": 3_600_000},
        {"run_id": "b", "owner": "owner-b", "now_ms": NOW, "lease_ms": 3_600_000},
        {"run_id": "b", "owner": "owner-b", "now_ms": NOW, "lease_ms": 3_600_000},
    ]


def test_a_cancel_in_the_heartbeats_reply_reaches_the_handler_and_ends_the_run_cancelled() -> None:
    store = ScriptedStore(
        ("begin_run", run(spec(event="stop", retries=3))),
        ("renew_run", "cancelled"),  # RENEW_RUN's reply carries the cancel
        ("finish_run", True),
    )
    registry = Registry()
    runner = Runner(store, registry, SETTINGS, lambda: NOW)
    checked: list[bool] = []

    def stop(given: dict[str, Any], ctx: RunContext) -> str:
        checked.append(ctx.cancelled())
        runner.heartbeat.renew_all()  # its next renewal, made here rather than on its thread
        checked.append(ctx.cancelled())
        ctx.check_cancelled()
        return "not reached"

    registry.add("billing", "stop", stop)
    outcome = runner.execute(RUN)
    assert store.done() and checked == [False, True]
    assert outcome.kind == "cancelled"  # not a retry, though attempts remain
    (finish,) = store.args("finish_run")
    assert finish["outcome"] == "cancelled" and finish["error"].startswith("RunCancelledError: run J:")


def test_a_run_cancelled_error_raised_without_a_cancel_is_an_ordinary_failure() -> None:
    store = ScriptedStore(("begin_run", run(spec(event="stop", retries=3))), ("finish_run", True))
    registry = Registry()

    def stop(given: dict[str, Any], ctx: RunContext) -> str:
        raise RunCancelledError("raised by the handler itself")

    registry.add("billing", "stop", stop)
    outcome = Runner(store, registry, SETTINGS, lambda: NOW).execute(RUN)
    assert outcome.kind == "retry" and store.args("finish_run")[0]["outcome"] == "retry"
