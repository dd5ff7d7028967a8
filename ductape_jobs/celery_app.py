"""The one Celery app factory, shared by producers, workers and beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Queue
from kombu.exceptions import OperationalError

from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.terms import hard_limit_s
from ductape_jobs.urls import broker_url, kombu_sentinel


def create_app(settings: Settings, *, name: str = "ductape_jobs") -> Celery:
    """A Celery app on the deployment's Redis, with one queue per env and at-least-once delivery."""
    keys = Keys(settings.key_prefix, settings.shards)
    broker, sentinel_options = _broker(settings)
    app = Celery(name, broker=broker, set_as_current=False)
    app.conf.update(
        # No result backend: results and errors live in our own run records.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # At-least-once: a run is acknowledged after it finished and redelivered when the
        # worker dies; run ids make the redelivery harmless (store.begin_run).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        # Each message carries its job's own limits (wire.py); this covers any that does not.
        task_time_limit=hard_limit_s(settings.job_timeout_s),
        task_queues=[_queue(settings.queue_for(env)) for env in settings.envs],
        task_default_queue=settings.queue_for(settings.envs[0]),
        task_create_missing_queues=False,
        broker_transport_options={
            "global_keyprefix": keys.broker_prefix,
            # Kept well above the ETA horizon so a held ETA message is never redelivered.
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu puts messages held unacked past the visibility timeout (a dead worker's runs)
            # back on their queues only every ~100 s by default (10 s x throttle 10); sweep every
            # few seconds so a dead worker's runs come back soon after the timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
            # The restore runs under a mutex kombu holds for up to 300 s by default: a worker
            # killed inside it (SIGKILL, OOM) would stop every restore, and so every message a
            # dead worker held, for five minutes. The restore itself takes milliseconds.
            "unacked_mutex_expire": 10,
            "socket_timeout": settings.socket_timeout_s,
            "socket_connect_timeout": settings.socket_timeout_s,
            **sentinel_options,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Task events cost about as much as the run itself on a no-op; Flower turns them on
        # (enable_events) while it watches, and DUCTAPE_TASK_EVENTS=true keeps them on.
        worker_send_task_events=settings.task_events,
        # The same switch for task-sent: Celery's own retries send it, and our producers and
        # beat send it for the runs they push (events.SentEvents reads this setting).
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        beat_scheduler="beat:RedisScheduler",
        timezone="UTC",
        enable_utc=True,
    )
    return app


def use_our_transport(app: Celery, settings: Settings) -> None:
    """Workers and beat take messages through ductape_jobs.transport (kombu#582 worked around,
    behind Sentinel too; the worker's FETCH); rediss:// keeps kombu's own, with its TLS defaults."""
    if settings.sentinel_target() is not None:
        app.conf.broker_transport = "ductape_jobs.transport:SentinelTransport"
    elif urlsplit(settings.url).scheme == "redis":
        app.conf.broker_transport = "ductape_jobs.transport:Transport"


def _broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL for kombu, and the transport options a Sentinel deployment adds (the
    master's name; the sentinels' own password and the same timeouts, as ``sentinel_kwargs``)."""
    target = settings.sentinel_target()
    if target is None:
        return broker_url(settings.url), {}
    url, options = kombu_sentinel(target)
    timeouts = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    sentinel_kwargs = cast(dict[str, Any], options.get("sentinel_kwargs", {}))
    return url, {**options, "sentinel_kwargs": {**timeouts, **sentinel_kwargs}}


def revoke_runs(app: Celery, run_ids: Sequence[str], *, terminate: bool) -> None:
    """Celery's revoke of these runs (their task ids), broadcast to every worker over the broker;
    with ``terminate`` the processes running them get SIGTERM. BackendUnavailableError when the
    broker can't be reached (the cancel itself is already recorded)."""
    try:
        app.control.revoke(list(run_ids), terminate=terminate, signal="SIGTERM")
    except (OperationalError, OSError) as exc:  # kombu's wrap of a broker connection error
        raise BackendUnavailableError(
            f"the cancel is recorded, but Celery's revoke of {', '.join(run_ids)} could not be "
            f"sent ({type(exc).__name__}); check the broker (REDIS_URL) and cancel again with terminate"
        ) from None


def _queue(name: str) -> Queue:
    """An env's queue, routed by its own name."""
    # kombu ships py.typed, but Queue.__init__ has no annotations.
    return Queue(name, routing_key=name)  # type: ignore[no-untyped-call]
