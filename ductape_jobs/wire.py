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
from typing import Any

from celery import Celery

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
    """Builds the message that runs ``run_id`` of a job on its env's queue.

    Celery's headers and properties for a (task, queue) pair are made once by Celery itself and
    kept as a template; each message copies them and fills in what differs: the run id, the ETA,
    the argsrepr and a fresh delivery tag. That keeps building off beat's hot path.
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.hostname = "ductape-jobs"
        self._templates: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}

    def build(self, run_id: str, spec: JobSpec, nominal_ms: int, now_ms: int) -> Message:
        """The message for one run; it carries an ETA only when the run is not yet due."""
        queue = self.settings.queue_for(spec.env)
        task = task_name(spec.product_tag, spec.event)
        template = self._templates.get((task, queue)) or self._template(task, queue)
        eta = ms_to_datetime(nominal_ms) if nominal_ms > now_ms else None
        shown = redact(spec.input, [tuple(p) for p in spec.redact_paths]) if spec.redact_paths else spec.input
        headers = dict(template[0])
        headers.update(
            id=run_id,
            root_id=run_id,
            eta=None if eta is None else eta.isoformat(),
            argsrepr=repr(shown)[:ARGSREPR_MAX],
        )
        properties = dict(template[1])
        properties.update(correlation_id=run_id, delivery_tag=str(uuid.uuid4()))
        body = json.dumps([[run_id], {}, EMBED], separators=(", ", ": "))
        envelope = {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
        return Message(self.keys.broker_prefix + queue, json.dumps(envelope))

    def _template(self, task: str, queue: str) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, properties, _, _ = self.app.amqp.create_task_message(
            "-", task, ["-"], {}, kwargsrepr="{}", origin=self.hostname, ignore_result=True,
            create_sent_event=False,
        )  # fmt: skip
        props = dict(properties)
        props.update(
            delivery_mode=2,
            delivery_info={"exchange": "", "routing_key": queue},
            priority=0,
            body_encoding="base64",
        )
        self._templates[(task, queue)] = (dict(headers), props)
        return self._templates[(task, queue)]


# Celery protocol 2's third body element: no callbacks, errbacks, chain or chord.
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
