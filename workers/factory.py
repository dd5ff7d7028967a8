"""The worker's Celery app, made by ``create_app``: one task per registered event, each a thin shell
around ``Runner.execute``. Making it connects to nothing (redis-py and kombu connect on first use)."""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import heartbeat_sent, worker_init, worker_ready
from celery.worker.request import Request

from ductape_jobs import celery_app, ops, tracing, transport
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.errors import HandlerError
from ductape_jobs.flower_guard import guard_flower
from ductape_jobs.keys import Keys
from ductape_jobs.ops import Replicas
from ductape_jobs.records import Lost
from ductape_jobs.registry import Handler, Registry, load_handlers
from ductape_jobs.runner import Runner, owner_prefix
from ductape_jobs.sealed import Vault
from ductape_jobs.sessions import Sessions, session_types_from_config
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from workers.hub_timers import HubTimers

log = logging.getLogger("workers")

SEEN_EVERY_S = 10.0  # how often a worker refreshes its seen_ms (doctor calls it stale after 60 s)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Celery:
    """The worker's Celery app with a task per handler in ``settings.handlers`` (settings from the
    environment when not given)."""
    settings = settings or Settings.from_env()
    registry = load_handlers(settings.handlers, registry)
    app = celery_app.create_app(settings, name="workers")
    app.conf.task_queues = [q for q in app.conf.task_queues if q.name in settings.served_queues()]
    celery_app.use_our_transport(app, settings)
    keys = Keys(settings.key_prefix, settings.shards)
    store = Store(connect(settings), keys, Retention.of(settings), Replicas.of(settings))
    vault = Vault(Sessions(session_types_from_config(settings.sessions)))
    runner = Runner(store, registry, settings, now_ms, vault=vault, defer_finish=True)
    request_class = lost_runs_reported(store)
    for entry in registry:
        _register_task(app, runner, entry, request_class)

    envs = settings.worker_envs or settings.envs
    seen: dict[str, Any] = {"hostname": None, "at": 0.0}

    # Connected by call, not as decorators: Celery is untyped, and a decorator would erase these
    # functions' types.
    def announce(sender: Any = None, **_: Any) -> None:
        # Producers refuse events no worker serves: publish ours, with the envs we consume.
        seen["hostname"], seen["at"] = getattr(sender, "hostname", "worker"), time.monotonic()
        store.run(
            ops.worker.register_worker(
                store.keys, seen["hostname"], [h.pair for h in registry], list(envs), now_ms()
            )
        )
        log.info("serving %d event(s) for envs %s", len(registry), ",".join(envs))

    def still_here(sender: Any = None, **_: Any) -> None:
        # Refreshed on Celery's own heartbeat, so seen_ms tells a live worker from one long gone.
        if seen["hostname"] is None or time.monotonic() - seen["at"] < SEEN_EVERY_S:
            return
        seen["at"] = time.monotonic()
        try:
            store.run(
                ops.worker.register_worker(
                    store.keys, seen["hostname"], [h.pair for h in registry], list(envs), now_ms()
                )
            )
        except Exception:  # noqa: BLE001 - a missed refresh only ages seen_ms; the next one retries
            log.warning("could not refresh this worker's registration; will retry")

    worker_init.connect(_share_start_up_with_the_pool, weak=False)
    worker_ready.connect(announce, weak=False)
    worker_ready.connect(_fetch_in_batches, weak=False)
    heartbeat_sent.connect(still_here, weak=False)
    app.steps["worker"].add(HubTimers)
    guard_flower(app)
    app.ductape_store = store
    app.ductape_settings = settings
    return app


def _share_start_up_with_the_pool(**_: Any) -> None:
    """Freeze the garbage collector's view of everything loaded so far before each pool process is
    forked. A prefork child shares the main process's pages until either writes to them, and a
    collection writes to every object it scans: without this, each child's first collections copy
    most of Celery, kombu and our modules (~20 MB a child). Frozen objects live as long as the
    process, which they do anyway; what is made after start-up is collected as usual."""
    if not _FREEZE_AT_FORK:
        gc.collect()  # what start-up left behind is freed, not frozen
        os.register_at_fork(before=gc.freeze)  # also for a child forked again later
        _FREEZE_AT_FORK.append(True)


def _fetch_in_batches(sender: Any = None, **_: Any) -> None:
    """Size the transport's FETCH batches from the ready consumer's prefetch and pool, both final
    by then (command line, ``auto`` and ``--autoscale`` included)."""
    prefetch = getattr(sender, "initial_prefetch_count", None)
    pool = getattr(getattr(sender, "pool", None), "num_processes", None)
    if isinstance(prefetch, int) and isinstance(pool, int) and prefetch > 0 and pool > 0:
        batch = transport.fetch_in_batches(prefetch, pool)
        log.info("taking messages in batches of %d (prefetch %d, pool %d)", batch, prefetch, pool)


_FREEZE_AT_FORK: list[bool] = []  # registered once per process: at-fork hooks cannot be removed


def _register_task(app: Celery, runner: Runner, entry: Handler, request_class: type[Request]) -> None:
    def run(self: Task, run_id: str) -> Any:
        with tracing.span("ductape.run", run_id=run_id, attempt=self.request.retries):
            outcome = runner.execute(run_id)
        if outcome.kind in ("retry", "busy") and outcome.retry_in_s is not None:
            # The retry's message shows what the first one did (the masked input, the job),
            # not Celery's repr of its arguments (the run id).
            shown = {k: getattr(self.request, k, None) for k in ("argsrepr", "kwargsrepr")}
            raise self.retry(countdown=outcome.retry_in_s, max_retries=None, **shown)
        if outcome.kind == "cancelled":
            # Stopped by its handler after a cancel: Flower shows it revoked (a terminated run's
            # revoke is announced by Celery itself).
            self.send_event("task-revoked", terminated=False, signum=None, expired=False)
            raise Ignore()
        if outcome.kind == "skipped":
            raise Ignore()
        if outcome.kind == "failed":
            # Already recorded and dead-lettered; raising lets Celery and Flower show the failure.
            raise HandlerError(outcome.error or "failed")
        return outcome.result

    # Registered by call, not as a decorator, so ``run`` keeps its types (Celery is untyped).
    # shared=False: the task belongs to this app only; Celery's default also registers it on
    # every app finalized later in the process (a second app, a test), where a handler of the
    # same name would collide with it.
    # acks_on_timeout=False: a run killed at its hard time limit goes back on its queue, and its
    # next delivery runs the next attempt, or finds it dead-lettered (LOSE_RUN) and skips it.
    app.task(
        name=entry.task_name,
        shared=False,
        bind=True,
        acks_late=True,
        acks_on_timeout=False,
        ignore_result=True,
        Request=request_class,
    )(run)


def lost_runs_reported(store: Store) -> type[Request]:
    """Celery's request class, reporting (in the worker's main process) a run whose pool process
    died or was killed at the hard time limit: its attempt counts at once (ops.worker.lose_run), so
    the delivery Celery puts back runs the next attempt without waiting out the run's lease."""

    class RunRequest(Request):  # type: ignore[misc]  # Celery is untyped
        def on_timeout(self, soft: bool, timeout: float) -> None:
            if not soft:
                self._lost(f"time limit exceeded: killed after {timeout:g} s")
            super().on_timeout(soft, timeout)

        def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
            exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
            if isinstance(exc, WorkerLostError | SystemExit):
                self._lost(f"worker lost: {exc}")
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

        def _lost(self, reason: str) -> None:
            if not self.worker_pid:
                return
            try:
                verdict = store.run(
                    ops.worker.lose_run(
                        store.keys, store.retention, self.id, owner_prefix(self.worker_pid), reason, now_ms()
                    )
                )
            except Exception:  # noqa: BLE001 - the run's lease runs out instead, and BEGIN_RUN counts it
                log.warning("could not record the lost attempt of run %s (%s)", self.id, reason)
                return
            log.warning("run %s: %s; %s", self.id, reason, LOST_VERDICTS[verdict])

    return RunRequest


LOST_VERDICTS = {
    Lost.DEAD: "that was its last attempt: dead-lettered",
    Lost.RETRY: "its next delivery runs the next attempt",
    Lost.MOVED: "the run had moved on already",
    Lost.CANCELLED: "it was cancelled: it ends cancelled, not retried",
}
