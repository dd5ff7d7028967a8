"""Beat stopping: Celery's SIGTERM handler closes the scheduler in the main thread, which may be in
the middle of a tick holding a lock of ours (not re-entrant); that close must not wait on itself,
and the close Celery's beat service makes after the handler unwound must hand the lead over."""

from __future__ import annotations

import pytest
import redis

from beat import leader
from beat.scheduler import RedisScheduler
from ductape_jobs import celery_app, events
from ductape_jobs.settings import Settings


def test_a_close_inside_a_tick_gives_up_and_the_close_after_it_hands_over(
    settings: Settings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(leader, "STEP_DOWN_WAIT_S", 0.05)
    monkeypatch.setattr(events, "CLOSE_WAIT_S", 0.05)
    evented = settings.replace(task_events=True)
    app = celery_app.create_app(evented, name="beat-stop")
    app.ductape_settings = evented  # as beat/celery.py hands them to the scheduler
    scheduler = RedisScheduler(app, lazy=True)
    scheduler.tick()  # takes the lead
    lock = scheduler.store.keys.beat_lock
    assert r.exists(lock)
    # The signal arrives while the tick holds both locks (leadership, task-sent events).
    with scheduler.engine.leadership._lock, scheduler.sent._lock:
        scheduler.close()  # returns: it does not wait on this thread's own locks
    assert r.exists(lock)  # the lead is still held: nothing was released half-way
    scheduler.close()  # Celery's beat service closes again once the handler's SystemExit unwound
    assert not r.exists(lock)
