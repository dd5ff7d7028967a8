"""Celery's ``task-sent`` events for the runs we hand over, so Flower shows a run when it is sent.

Our Lua scripts push run messages themselves, so Celery's ``send_task`` (which sends ``task-sent``
when ``task_send_sent_event`` is on) never runs for them. ``SentEvents`` sends the same event,
with the fields ``celery.app.amqp`` gives it, read back from each message as it was pushed: what
Flower shows is what the message carries (the masked argsrepr, never an input or a session value).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.events import EventDispatcher

from ductape_jobs.records import Message

log = logging.getLogger("ductape_jobs.events")

BATCH = 1000  # events per published batch (Celery's ``task.multi``: one message for many events)
CLOSE_WAIT_S = 2.0  # how long close() waits for events being sent (see there)


def sent_fields(message: Message, exchanges: dict[str, str]) -> dict[str, Any]:
    """The fields of Celery's ``task-sent`` event for one message (``send_task_message``'s
    sent_event, with its queue, exchange and routing key); ``exchanges`` maps the app's queues to
    their exchanges (our env queues: an exchange of the queue's name, as ``create_app`` declares)."""
    envelope = json.loads(message.payload)
    headers = envelope["headers"]
    info = envelope["properties"]["delivery_info"]
    queue = info["routing_key"]
    return {
        "uuid": headers["id"],
        "root_id": headers["root_id"],
        "parent_id": headers["parent_id"],
        "name": headers["task"],
        "args": headers["argsrepr"],
        "kwargs": headers["kwargsrepr"],
        "retries": headers["retries"],
        "eta": headers["eta"],
        "expires": headers["expires"],
        "queue": queue,
        "exchange": exchanges.get(queue) or info["exchange"] or queue,
        "routing_key": queue,
    }


class SentEvents:
    """Sends ``task-sent`` for handed-over runs when the app's ``task_send_sent_event`` is on
    (DUCTAPE_TASK_EVENTS); otherwise calling it costs one check.

    One dispatcher per process, opened on first use (again after a fork) and kept until
    ``close()``; events go out in batches of ``BATCH``. An event is best effort, as Celery's: a
    failure to send one is logged, never raised into the hand-over that already happened.
    """

    def __init__(self, app: Celery, *, enabled: bool | None = None) -> None:
        self.app = app
        self.enabled = bool(app.conf.task_send_sent_event if enabled is None else enabled)
        self._dispatcher: EventDispatcher | None = None
        self._lock = threading.Lock()  # one kombu channel: one publisher at a time
        self._exchanges = {name: queue.exchange.name for name, queue in app.amqp.queues.items()}

    def __call__(self, messages: Sequence[Message]) -> None:
        """Send ``task-sent`` for each message just handed to Celery."""
        if not self.enabled or not messages:
            return
        try:
            with self._lock:
                dispatcher = self._open()
                for message in messages:
                    dispatcher.send("task-sent", **sent_fields(message, self._exchanges))
                dispatcher.flush()
        except Exception as exc:  # noqa: BLE001 - an event never fails the hand-over it reports
            log.warning("could not send task-sent events (%s: %s)", type(exc).__name__, exc)

    def _open(self) -> EventDispatcher:
        if self._dispatcher is not None and self._dispatcher.pid == os.getpid():
            return self._dispatcher
        # A buffered group goes out as one ``task.multi`` message per flush (or per BATCH). While
        # the broker is unreachable kombu's publish fails and Celery keeps the batch to send on
        # the next flush; events only follow a write to that same Redis, so that buffer holds at
        # most what was handed over in the moment the server went away.
        self._dispatcher = self.app.events.Dispatcher(
            connection=self.app.connection_for_write(),
            buffer_group=["task"],
            buffer_limit=BATCH,
            buffer_while_offline=True,
        )
        return self._dispatcher

    def close(self) -> None:
        """Close the dispatcher and its connection (if one was opened in this process).

        Beat's SIGTERM handler closes the scheduler, and so this, in the main thread, which may be
        sending events under ``self._lock`` (not re-entrant): then this gives up after
        CLOSE_WAIT_S, and the close Celery's beat service makes after the handler unwound does it."""
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            return
        try:
            dispatcher, self._dispatcher = self._dispatcher, None
        finally:
            self._lock.release()
        if dispatcher is not None and dispatcher.pid == os.getpid():
            dispatcher.close()
            dispatcher.connection.release()
