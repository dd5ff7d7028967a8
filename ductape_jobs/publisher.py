"""Sending runs to Celery outside the atomic scripts: a deliberate re-send of existing runs.

Normal hand-over happens inside CREATE_JOBS, CLAIM_DUE and ADD_RUN (see wire.py); this is for
operators and tests that need to deliver a run's message again (workers skip finished runs).
"""

from __future__ import annotations

from collections.abc import Sequence

from ductape_jobs.store import Dispatch, Store, Unreadable
from ductape_jobs.wire import MessageBuilder


class Publisher:
    """Pushes the messages of existing runs onto their queues."""

    def __init__(self, store: Store, builder: MessageBuilder) -> None:
        self.store = store
        self.builder = builder

    def publish(self, dispatches: Sequence[Dispatch | Unreadable], now_ms: int) -> list[str]:
        """Send each run again (with an ETA when not yet due); returns the run ids sent (an
        unreadable one is not)."""
        sendable = [d for d in dispatches if isinstance(d, Dispatch)]
        messages = [self.builder.from_brief(d.run_id, d.brief, d.nominal_ms, now_ms) for d in sendable]
        self.store.push_messages(messages)
        return [d.run_id for d in sendable]
