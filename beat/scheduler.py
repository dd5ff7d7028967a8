"""The Celery side of beat: a ``celery.beat.Scheduler`` whose tick runs the engine."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from celery import beat as celery_beat

from beat.engine import BeatEngine
from beat.health import RedisWatch
from beat.imported import beat_schedule
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.events import SentEvents
from ductape_jobs.keys import Keys
from ductape_jobs.ops import Replicas
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from ductape_jobs.wire import MessageBuilder

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from beat.metrics import BeatMetrics

log = logging.getLogger("beat")


# Celery ships no type information, so its Scheduler is Any to mypy.
class RedisScheduler(celery_beat.Scheduler):  # type: ignore[misc]
    """Celery beat scheduler backed by the ductape-jobs due index in Redis."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.settings: Settings = getattr(app, "ductape_settings", None) or Settings.from_env()
        keys = Keys(self.settings.key_prefix, self.settings.shards)
        retention = Retention.of(self.settings)
        self.store = Store(connect(self.settings), keys, retention, Replicas.of(self.settings))
        self.watch = RedisWatch(self.store)  # eviction policy, memory headroom, vanished records
        instance = f"{socket.gethostname()}:{os.getpid()}"
        # task-sent for what beat pushes: with the app's task_send_sent_event (``celery -A proj
        # beat``: the project's setting) or DUCTAPE_TASK_EVENTS
        events_on = bool(app.conf.task_send_sent_event) or self.settings.task_events
        self.sent = SentEvents(app, enabled=events_on)
        self.engine = BeatEngine(
            self.store,
            self.settings,
            MessageBuilder(app, self.settings),
            instance,
            record_releases=self.settings.metrics_port is not None,
            # app.conf.beat_schedule's entries, synced whenever this beat takes the lead
            imports=beat_schedule(app, self.settings),
            handed=self.sent,
        )
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.metrics: BeatMetrics | None = None
        self._metrics_server: WSGIServer | None = None
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        """Schedules live in Redis; app.conf.beat_schedule is synced into them by the leader
        (beat/imported.py, SYNC_IMPORTED), not kept here as Celery's schedulers keep it."""
        # Everything loaded so far (Celery, kombu, our modules) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise stall a tick now and then.
        gc.freeze()
        self._renewer = threading.Thread(target=self._renew_loop, name="beat-lock", daemon=True)
        self._renewer.start()
        if self.settings.metrics_port is not None:
            from beat.metrics import BeatMetrics  # prometheus_client: only a beat serving metrics loads it

            leadership = self.engine.leadership
            self.metrics = BeatMetrics(
                self.store,
                lambda: leadership.held,
                self.settings,
                reports_redis=lambda: 0 in leadership.tokens,
                shards_led=lambda: leadership.tokens.keys(),
            )
            self._metrics_server = self.metrics.serve()
            log.info("metrics on %s:%d/metrics", self.settings.metrics_addr, self.settings.metrics_port)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One engine tick; returns seconds until the next one."""
        started_ms = now_ms()
        try:
            self.watch.check(started_ms)
            report = self.engine.tick(started_ms)
        except Exception:
            log.exception("beat tick failed; retrying")
            return 1.0
        if report.released:
            log.info("released %d run(s) (shards %s)", report.released, report.shards)
        if self.metrics is not None:
            self.metrics.observe(report)
        # The engine's sleep is measured from the tick's start; a long tick must not make the
        # next one late by its own length, so take the time spent off it.
        return max(report.sleep_ms - (now_ms() - started_ms), 0) / 1000

    def _renew_loop(self) -> None:
        # The lock is renewed on its own timer so a long tick cannot let it lapse; fencing in
        # the claim script keeps a stalled leader harmless either way.
        period = self.settings.beat_lock_ttl_ms / 3000
        while not self._stop.wait(period):
            try:
                self.engine.leadership.renew()
            except Exception:  # noqa: BLE001
                log.warning("could not renew the beat lock; will retry")

    def sync(self) -> None:
        """Nothing to flush: every change is written to Redis as it happens."""

    def close(self) -> None:
        """Stop renewing and hand leadership to a standby."""
        self._stop.set()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        # Best effort: if Redis is unreachable the lock lapses on its TTL and a standby takes over.
        with contextlib.suppress(Exception):
            self.engine.step_down()
        self.sent.close()
        super().close()

    @property
    def info(self) -> str:
        """Shown in beat's start-up banner."""
        return f"ductape-jobs due index, key prefix {self.settings.key_prefix!r}"
