"""The Redis-backed beat: ``celery -A beat beat`` (beat/celery.py), or ``-S beat.RedisScheduler`` in
any Celery app.

Owns: leader election with fencing (``leader``: one object owns the lock and its token),
releasing due runs from the Redis due index to Celery (claim, advance and message push atomic per
claim script, decided up to 250 ms ahead), and sending again runs whose message was lost
(``lost``), removing what left after its retention (``retention``), and watching Redis's
eviction policy and memory headroom (``health``). ``engine`` never imports Celery (it takes the
time and a message builder); ``scheduler`` is the thin Celery adapter, ``metrics`` its
Prometheus endpoint. Must not import ``workers``; talks to Redis only through
``ductape_jobs.store``.
"""

from __future__ import annotations

from beat.engine import BeatEngine
from beat.scheduler import RedisScheduler

__all__ = ["BeatEngine", "RedisScheduler"]
