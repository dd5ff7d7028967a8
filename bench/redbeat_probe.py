"""RedBeat, unchanged, with each message stamped with the due time it was sent for (figure 6).

``celery -A bench.plain_app beat -S bench.redbeat_probe:ProbedRedBeatScheduler``. RedBeat's
messages carry no due time, so this subclass notes ``last_run_at + run_every`` of the entry it is
about to send, and a ``before_task_publish`` hook copies it into the message headers.
"""

from __future__ import annotations

from typing import Any

from celery.signals import before_task_publish
from redbeat import RedBeatScheduler

DUE_HEADER = "bench_due_ms"
_sending: dict[str, int] = {}


class ProbedRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeatScheduler that remembers the due time of the entry being sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Connected here, in the beat that runs the probe, not on import: the bench's own process
        # imports this module (figure 6), and a receiver there would make every figure pay for
        # Celery's publish signals (which our builder fires only when someone listens).
        before_task_publish.connect(_stamp, weak=False)
        super().__init__(*args, **kwargs)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Send as RedBeat does, with the entry's due time noted for the publish hook."""
        if entry.last_run_at is not None:
            _sending["due_ms"] = int((entry.last_run_at + entry.schedule.run_every).timestamp() * 1000)
        try:
            return super().apply_async(entry, producer, advance, **kwargs)
        finally:
            _sending.clear()


def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and "due_ms" in _sending:
        headers[DUE_HEADER] = _sending["due_ms"]
