"""The worker's event-loop timers, kept to what is still to come.

Celery's prefork pool sets a timer on the worker's event loop for the hard time limit of every
task it hands to a pool process (``AsynPool.on_timeout_set``; ours always have one: a run's
timeout and a grace, ``task_time_limit``). When the task ends in time the timer is cancelled,
but kombu's timer only marks it: the entry stays in its heap until its time comes, the time limit
later (330 s at the default timeout). A busy worker's main process so holds rate x time limit
dead entries (at 500 runs a second, 165,000 of them: tens of MB, and a heap every timer pays a
log of), for nothing. This bootstep drops the cancelled ones every ``EVERY_S``, as asyncio's event
loop does with its own cancelled timers, so the heap holds those of the last seconds at most; and
``celery inspect stats`` shows the heap's size (``hub_timers``).
"""

from __future__ import annotations

import heapq
from typing import Any

from celery import bootsteps
from kombu.asynchronous.timer import Timer

EVERY_S = 5.0


def drop_cancelled(timer: Timer) -> int:
    """Take the cancelled entries out of a kombu timer's heap (``scheduled(eta, priority,
    entry)`` tuples, kept in place: the timer's iterator holds the same list). Returns how many."""
    queue: list[Any] = timer._queue  # kombu keeps no other handle on its heap
    live = [item for item in queue if not item.entry.canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live
    return dropped


class HubTimers(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Drops cancelled timers from the worker's event loop (a worker without one, under eventlet or
    gevent, sets no such timers)."""

    requires = ("celery.worker.components:Hub",)

    def start(self, worker: Any) -> None:
        """Drop them every ``EVERY_S`` on the worker's event loop."""
        hub = getattr(worker, "hub", None)
        if hub is not None:
            hub.call_repeatedly(EVERY_S, drop_cancelled, hub.timer)

    def info(self, worker: Any) -> dict[str, int]:
        """The event loop's timers (``celery inspect stats``): what is set, cancelled ones included."""
        hub = getattr(worker, "hub", None)
        return {} if hub is None else {"hub_timers": len(hub.timer)}
