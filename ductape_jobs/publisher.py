"""Handing runs to Celery: one message per run, named by event, on the env's queue.

Messages carry only the run id; the worker loads the input from the run's job record, so inputs
(and anything a session put in them) never travel through the broker. Flower sees the input
through ``argsrepr``, with session values masked.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from ductape_jobs.models import ms_to_datetime
from ductape_jobs.registry import task_name
from ductape_jobs.sessions import redact
from ductape_jobs.settings import Settings
from ductape_jobs.store import Dispatch

ARGSREPR_MAX = 1_024


class Publisher:
    """Publishes dispatches through one Celery app, reusing one producer per batch."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def publish(self, dispatches: Sequence[Dispatch], now_ms: int) -> list[str]:
        """Send each run (with an ETA when it is not yet due); returns the run ids sent."""
        sent: list[str] = []
        if not dispatches:
            return sent
        with self.app.producer_or_acquire() as producer:
            for d in dispatches:
                spec = d.spec
                # An ETA is never further out than the horizon: later runs wait in the due index.
                eta = ms_to_datetime(d.nominal_ms) if d.nominal_ms > now_ms else None
                shown = redact(spec.input, [tuple(p) for p in spec.redact_paths])
                self.app.send_task(
                    task_name(spec.product_tag, spec.event),
                    args=[d.run_id],
                    task_id=d.run_id,
                    queue=self.settings.queue_for(spec.env),
                    routing_key=self.settings.queue_for(spec.env),
                    eta=eta,
                    argsrepr=repr(shown)[:ARGSREPR_MAX],
                    kwargsrepr="{}",
                    producer=producer,
                    ignore_result=True,
                )
                sent.append(d.run_id)
        return sent
