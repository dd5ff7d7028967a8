"""The Redis-backed beat: ``celery -A workers beat`` (or ``-S beat.RedisScheduler``).

Owns: leader election with fencing, releasing due runs from the Redis due index to Celery, and
re-publishing runs claimed but never confirmed. ``engine`` never imports Celery (it takes the
time and a dispatch callable); ``scheduler`` is the thin Celery adapter. Talks to Redis only
through ``ductape_jobs.store``.
"""

from __future__ import annotations

from beat.engine import BeatEngine
from beat.scheduler import RedisScheduler

__all__ = ["BeatEngine", "RedisScheduler"]
