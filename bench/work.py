"""The handler work of figure 3's curve, shared by our handler and the plain task. Imports
nothing of ours, so the plain Celery app that imports it loads no more than a plain Celery app
would (its memory is a bench figure)."""

from __future__ import annotations

import time

WORK = {"no-op": 0.0, "1 ms CPU": 0.001, "10 ms sleep": 0.010}  # by name


def do_work(kind: str) -> None:
    """The handler work named ``kind``: nothing, 1 ms of CPU (a busy loop) or a 10 ms sleep."""
    seconds = WORK[kind]
    if kind.endswith("CPU"):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    elif seconds:
        time.sleep(seconds)
