"""Executing one run on a worker: claim it, use the cache, call the handler, record the outcome.

Celery-free: workers/ wraps ``Runner.execute`` in one Celery task per event and turns the
returned ``Outcome`` into Celery's retry. The store is injected (``RunStore``; ``Store`` in
workers), so tests/unit/test_runner_scripted.py drives these decisions with scripted store replies
and tests/integration/test_lifecycle.py over real Redis. While a run executes, the process's
heartbeat keeps it leased; its start and outcome are written even across a Redis restart (tried
again until Redis is back).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from ductape_jobs.calling import call_handler
from ductape_jobs.errors import BackendUnavailableError, RetiredKeyError, loaded_pydantic, validation_error
from ductape_jobs.heartbeat import Heartbeat, Leases
from ductape_jobs.keys import Keys
from ductape_jobs.records import Answer, Finish, Started, StateAction, Verdict
from ductape_jobs.registry import CancelSignal, Registry, RunContext
from ductape_jobs.scrub import Scrubber
from ductape_jobs.sealed import Vault
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec, job_id_of

log = logging.getLogger("ductape_jobs.runner")

MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000
MIN_PATIENCE_S = 60
T = TypeVar("T")
# A result as JSON, what json.dumps(result, default=str) gives: made once, as json.dumps does for
# its default arguments (with default= given it builds an encoder on every call, on every run).
_RESULT_JSON = json.JSONEncoder(default=str)


def owner_prefix(pid: int) -> str:
    """How a run's owner (the delivery running it) starts: ``host:pid:``, what a worker's main
    process knows of a pool process that died."""
    return f"{socket.gethostname()}:{pid}:"


_owners: dict[int, tuple[str, itertools.count[int]]] = {}  # pid -> (host:pid:nonce, count)


def delivery_owner() -> str:
    """A name for one delivery run in this process, unique: ``host:pid:`` then a nonce drawn
    once per process and a count (no hostname or random syscall per run)."""
    pid = os.getpid()
    named = _owners.get(pid)
    if named is None:
        _owners.clear()  # a forked pool process starts its own
        named = _owners[pid] = (f"{owner_prefix(pid)}{os.urandom(4).hex()}", itertools.count())
    return f"{named[0]}-{next(named[1]):x}"


# What became of one delivery; workers/ turns it into Celery's retry, ignore or failure.
OutcomeKind = Literal["completed", "retry", "failed", "cancelled", "skipped", "busy"]


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery, with its result, its retry delay or its error."""

    kind: OutcomeKind
    result: Any = None
    retry_in_s: float | None = None
    error: str | None = None


def backoff_s(attempt: int, cap_s: int) -> int:
    """Delay before the attempt after ``attempt``: 1 s, 2 s, 4 s ... capped."""
    return int(min(2 ** (attempt - 1), cap_s))


def cache_digest(spec: JobSpec) -> str:
    """What makes two runs share a cached result: product, env, event, app and input."""
    same = {k: getattr(spec, k) for k in ("product_tag", "env", "event", "app")}
    if spec.input_digest is None:
        same["input"] = spec.input
    else:
        # A sealed job's stored input is masked, so two users' jobs look alike there; the HMAC
        # of the real input tells them apart (and stays under its own key, so it can't collide).
        same["input_digest"] = spec.input_digest
        same["session_tag"] = spec.session_tag
    blob = json.dumps(same, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class RunStore(Leases, Protocol):
    """What the runner needs of the store (``Store``): the steps of one run."""

    @property
    def keys(self) -> Keys:
        """The deployment's key builders (cache keys)."""
        ...

    def begin_run(self, run_id: str, job_id: str, now_ms: int, lease_ms: int, owner: str) -> Started:
        """BEGIN_RUN: start the run for ``owner``, or say why not."""
        ...

    def finish_run(
        self,
        run_id: str,
        job_id: str,
        attempt: int,
        now_ms: int,
        outcome: Finish,
        *,
        result_json: str,
        error: str,
        traceback: str,
        cached: bool,
        retention_s: int,
        due_ms: int | None,
        wait: bool,
    ) -> bool:
        """FINISH_RUN: record one attempt's outcome."""
        ...

    def change_state(self, action: StateAction, job_id: str, now_ms: int) -> tuple[Answer, str | None]:
        """CHANGE_STATE: its answer, and the status it saw."""
        ...

    def cached_result(self, key: str) -> str | None:
        """A live cached result (JSON), or None."""
        ...

    def store_result(self, key: str, result_json: str, ttl_ms: int) -> None:
        """Cache a successful result for ttl_ms."""
        ...

    def unread(self) -> Callable[[], bool]:
        """Whether the outcome this thread last sent without waiting is still unread."""
        ...


class Runner:
    """Runs deliveries of run ids against the registered handlers."""

    def __init__(
        self,
        store: RunStore,
        registry: Registry,
        settings: Settings,
        clock_ms: Callable[[], int],
        vault: Vault | None = None,
        *,
        defer_finish: bool = False,
    ) -> None:
        """``defer_finish``: send a completed run's record without waiting for Redis's reply
        (workers: the reply is read before the next run; see ``Store.finish_run``)."""
        self.defer_finish = defer_finish
        self.store = store
        self.registry = registry
        self.settings = settings
        self.clock_ms = clock_ms
        self.vault = vault or Vault(Sessions({}))
        self.heartbeat = Heartbeat(store, settings.run_lease_s * 1000, clock_ms)
        # An outcome that can't be written is tried again for at least a lease, and at least a
        # minute: FINISH_RUN is fenced by the attempt number, so writing late is never wrong.
        self.patience_s = max(settings.run_lease_s, MIN_PATIENCE_S)

    def execute(self, run_id: str) -> Outcome:
        """Run one delivery of ``run_id`` at most once per attempt, recording what happened."""
        job_id = job_id_of(run_id)
        owner = delivery_owner()
        lease_ms = self.settings.run_lease_s * 1000
        started = self._written(
            lambda: self.store.begin_run(run_id, job_id, self.clock_ms(), lease_ms, owner), "start", run_id
        )
        if started.verdict == Verdict.BUSY:
            # Another delivery of the same run holds it (a duplicate publish); look again later.
            return Outcome("busy", retry_in_s=min(started.wait_ms / 1000, self.settings.horizon_ms / 1000))
        if started.verdict == Verdict.RUN and started.unreadable:
            return self._unreadable(run_id, job_id, started)
        if started.verdict != Verdict.RUN or started.spec is None:
            return Outcome("skipped")
        cancel = CancelSignal()
        self.heartbeat.hold(run_id, owner, cancel.set)
        try:
            return self._run(run_id, job_id, started, cancel)
        finally:
            self.heartbeat.release(run_id)

    def _run(self, run_id: str, job_id: str, started: Started, cancel: CancelSignal) -> Outcome:
        assert started.spec is not None
        spec, attempt = started.spec, started.attempt
        handler = self.registry.get(spec.product_tag, spec.event)
        ctx = RunContext(
            job_id=job_id,
            run_id=run_id,
            attempt=attempt,
            env=spec.env,
            product_tag=spec.product_tag,
            event=spec.event,
            app=spec.app,
            scheduled_ms=started.nominal_ms,
            max_attempts=spec.retries + 1,
            cancel_signal=cancel,
        )
        cache_key = self._cache_key(spec)
        if cache_key is not None:
            hit = self.store.cached_result(cache_key)
            if hit is not None:
                self._finish(ctx, "completed", result_json=hit, cached=True)
                return Outcome("completed", result=self.vault.shown_result(spec, hit))
        if handler is None:
            error = f"no handler for {spec.product_tag}/{spec.event} on this worker; check DUCTAPE_HANDLERS"
            return self._fail(ctx, error, "", retryable=False)
        hidden = Scrubber()  # session values, kept out of error texts
        try:
            opened = self.vault.open(spec)
            hidden = opened.hidden
            result = call_handler(handler, opened.input, ctx, self.settings.timeout_s(spec))
            result_json = self.vault.seal_result(spec, _result_json(result))
        except RetiredKeyError as exc:  # sealed under a key that left the ring: no run can open it
            return self._set_aside(ctx, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any handler failure is recorded, never lost
            if validation_error(exc):  # the input does not fit the handler's model: retrying won't help
                return self._fail(ctx, _error_text(exc, hidden), _trace(hidden), retryable=False)
            # RunCancelledError from ctx.check_cancelled(), or anything a cancelled handler raised on
            # its way out: never retried. (RunCancelledError raised without a cancel is a failure.)
            if ctx.cancelled():
                return self._cancelled(ctx, _error_text(exc, hidden))
            return self._fail(ctx, _error_text(exc, hidden), _trace(hidden), retryable=True)
        self._finish(ctx, "completed", result_json=result_json)
        if cache_key is not None:
            self.store.store_result(cache_key, result_json, self.settings.caches[spec.cache or ""].ttl_ms)
        return Outcome("completed", result=self.vault.shown_result(spec, result_json))

    def _cache_key(self, spec: JobSpec) -> str | None:
        if spec.cache is None or spec.cache not in self.settings.caches:
            return None
        return self.store.keys.cache(spec.cache, cache_digest(spec))

    def _fail(self, ctx: RunContext, error: str, trace: str, *, retryable: bool) -> Outcome:
        if retryable and ctx.attempt < ctx.max_attempts:
            delay_s = backoff_s(ctx.attempt, self.settings.backoff_cap_s)
            if delay_s * 1000 <= self.settings.horizon_ms:
                self._finish(ctx, "retry", error=error, trace=trace)
                return Outcome("retry", retry_in_s=delay_s, error=error)
            # Longer than the ETA horizon: the retry waits in the due index for beat.
            self._finish(ctx, "retry_due", error=error, trace=trace, due_ms=self.clock_ms() + delay_s * 1000)
            return Outcome("retry", error=error)
        log.warning("run %s failed after %d attempt(s): %s", ctx.run_id, ctx.attempt, error)
        self._finish(ctx, "failed", error=error, trace=trace)
        return Outcome("failed", error=error)

    def _cancelled(self, ctx: RunContext, error: str) -> Outcome:
        # FINISH_RUN also ends a flagged run 'cancelled' whatever outcome it is sent, so a cancel
        # the heartbeat had not yet seen when the handler failed is not retried either.
        log.info("run %s was cancelled", ctx.run_id)
        self._finish(ctx, "cancelled", error=error)
        return Outcome("cancelled", error=error)

    def _set_aside(self, ctx: RunContext, reason: str) -> Outcome:
        outcome = self._fail(ctx, reason, "", retryable=False)
        # Every later run would fail the same way: the schedule stops here, with the reason.
        self.store.change_state("set_aside", ctx.job_id, self.clock_ms())
        return outcome

    def _unreadable(self, run_id: str, job_id: str, started: Started) -> Outcome:
        # Its spec will not read any better on the next attempt: the run fails at once with the
        # reason and the job is set aside (as beat does with a record it cannot read), instead of
        # the run staying 'running' until its leases run out attempt after attempt.
        log.error("run %s: %s; its job is set aside (ductape-jobs set-aside)", run_id, started.unreadable)
        ctx = RunContext(
            job_id=job_id,
            run_id=run_id,
            attempt=started.attempt,
            env="",
            product_tag="",
            event="",
            app=None,
            scheduled_ms=started.nominal_ms,
            max_attempts=started.attempt,
        )
        return self._set_aside(ctx, started.unreadable)

    def _written(self, step: Callable[[], T], what: str, run_id: str) -> T:
        """``step()``, tried again while Redis is unreachable: a run's start or outcome is written
        once Redis is back (for up to ``patience_s``), not dropped with the run left 'running'."""
        deadline = time.monotonic() + self.patience_s
        delay_s = 0.05
        while True:
            try:
                return step()
            except BackendUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                log.warning("Redis is unreachable; will %s run %s again in %.2f s", what, run_id, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)

    def _finish(
        self,
        ctx: RunContext,
        outcome: Finish,
        *,
        result_json: str = "null",
        error: str = "",
        trace: str = "",
        cached: bool = False,
        due_ms: int | None = None,
    ) -> None:
        def write(wait: bool) -> bool:
            return self.store.finish_run(
                ctx.run_id,
                ctx.job_id,
                ctx.attempt,
                self.clock_ms(),
                outcome,
                result_json=result_json,
                error=error,
                traceback=trace,
                cached=cached,
                retention_s=self.settings.run_retention_s,
                due_ms=due_ms,
                wait=wait,
            )

        deferred = self.defer_finish and outcome == "completed"
        self._written(lambda: write(not deferred), "record the outcome of", ctx.run_id)
        if deferred:
            # Sent, its reply read before this process's next run; if none comes soon, the
            # heartbeat writes it again (the same outcome of the same attempt: harmless).
            def again() -> bool:
                return self._written(lambda: write(True), "record the outcome of", ctx.run_id)

            self.heartbeat.confirm(ctx.run_id, self.store.unread(), again)


def _result_json(result: Any) -> str:
    # Most handlers return nothing: no encoder for that (~1.5 us a run).
    return "null" if result is None else _RESULT_JSON.encode(_plain(result))


def _plain(result: Any) -> Any:
    model = loaded_pydantic("BaseModel")  # a handler returning a model has loaded it
    return result.model_dump(mode="json") if model and isinstance(result, model) else result


def _error_text(exc: BaseException, hidden: Scrubber) -> str:
    # Scrubbed before it is cut: a cut first could leave part of a value the scrub can't see.
    return hidden.clip(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)


def _trace(hidden: Scrubber) -> str:
    return hidden.clip(traceback.format_exc(), MAX_TRACEBACK_CHARS, keep_end=True)
