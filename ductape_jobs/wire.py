"""Celery messages built for a Redis broker, so a run and its message are written in one script.

Celery's protocol-2 headers and body come from Celery itself (``app.amqp.create_task_message``);
the envelope is the one kombu's Redis transport pushes onto a queue list (JSON with a base64 body,
a delivery tag and the routing info). Writing the message inside our Lua scripts makes "record the
run" and "hand it to Celery" one atomic step: no run is ever stored without its message or sent
without its record, and a fenced-out beat cannot send anything.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu.serialization import dumps

from ductape_jobs.keys import Keys
from ductape_jobs.models import JobSpec, ms_to_datetime
from ductape_jobs.registry import task_name
from ductape_jobs.sessions import redact
from ductape_jobs.settings import Settings

ARGSREPR_MAX = 1_024


@dataclass(frozen=True)
class Message:
    """One ready-to-push broker message: the Redis list it goes to and its payload."""

    queue_key: str
    payload: str


def run_id_of(envelope: Any) -> str | None:
    """The run id a broker message (a decoded envelope as kombu stores it) carries, if any."""
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    run_id = headers.get("id") if isinstance(headers, dict) else None
    return run_id if isinstance(run_id, str) else None


class MessageBuilder:
    """Builds the message that runs ``run_id`` of a job on its env's queue."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.hostname = "ductape-jobs"

    def build(self, run_id: str, spec: JobSpec, nominal_ms: int, now_ms: int) -> Message:
        """The message for one run; it carries an ETA only when the run is not yet due."""
        queue = self.settings.queue_for(spec.env)
        eta: datetime | None = ms_to_datetime(nominal_ms) if nominal_ms > now_ms else None
        shown = redact(spec.input, [tuple(p) for p in spec.redact_paths]) if spec.redact_paths else spec.input
        headers, properties, body, _ = self.app.amqp.create_task_message(
            run_id,
            task_name(spec.product_tag, spec.event),
            [run_id],
            {},
            eta=eta,
            argsrepr=repr(shown)[:ARGSREPR_MAX],
            kwargsrepr="{}",
            origin=self.hostname,
            ignore_result=True,
            create_sent_event=False,
        )
        content_type, content_encoding, raw = dumps(body, serializer="json")
        properties = dict(properties)
        properties.update(
            delivery_mode=2,
            delivery_info={"exchange": "", "routing_key": queue},
            priority=0,
            body_encoding="base64",
            delivery_tag=str(uuid.uuid4()),
        )
        envelope = {
            "body": base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
        return Message(self.keys.broker_prefix + queue, json.dumps(envelope, default=str))
