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
import os
import re
from bisect import bisect
from typing import Any

from celery import Celery
from kombu import serialization

from ductape_jobs.brief import JobBrief, argsrepr
from ductape_jobs.keys import Keys
from ductape_jobs.models import CeleryCall, JobSpec, hard_limit_s, job_id_of, ms_to_datetime, task_name
from ductape_jobs.records import Message
from ductape_jobs.settings import Settings


class MessageBuilder:
    """Builds the message that runs ``run_id`` of a job on its env's queue.

    Celery's headers and properties for a (task, queue) pair are made once by Celery itself and
    serialized once into a template with holes; each message fills in what differs: the run id,
    the ETA, the argsrepr, the kwargsrepr (naming the job, which Flower shows), the time limits
    and a fresh delivery tag. That keeps building off the hot paths of ``schedule_many()`` and
    beat (a few microseconds a message, no per-message ``json.dumps``).
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.hostname = "ductape-jobs"
        self._templates: dict[tuple[str, str], str] = {}

    def build(
        self,
        run_id: str,
        spec: JobSpec,
        nominal_ms: int,
        now_ms: int,
        input: dict[str, Any] | None = None,
        shown: str | None = None,
    ) -> Message:
        """The message for one run; it carries an ETA only when the run is not yet due.

        ``input`` stands in for ``spec.input`` (a batch's jobs that share all but their input),
        ``shown`` for the argsrepr made from it (as ``brief.argsrepr``) when the caller has it.
        """
        shown = argsrepr(spec, input) if shown is None else shown
        where = (spec.env, spec.product_tag, spec.event, spec.timeout_s)
        return self._build(run_id, where, shown, nominal_ms, now_ms)

    def from_brief(self, run_id: str, brief: JobBrief, nominal_ms: int, now_ms: int) -> Message:
        """The same message, built from a job's brief (beat never loads a job's input)."""
        if brief.celery is not None:
            return self.plain_task(run_id, brief.celery, now_ms)
        where = (brief.env, brief.product_tag, brief.event, brief.timeout_s)
        return self._build(run_id, where, brief.argsrepr, nominal_ms, now_ms)

    def _build(
        self, run_id: str, where: tuple[str, str, str, int | None], shown: str, nominal_ms: int, now_ms: int
    ) -> Message:
        """``where``: the job's env, product_tag, event and timeout_s."""
        env, product_tag, event, timeout_s = where
        queue = self.settings.queue_for(env)
        task = task_name(product_tag, event)
        template = self._templates.get((task, queue)) or self._template(task, queue)
        quoted_id = _quote(run_id)
        body = f"[[{quoted_id}], {{}}, {_EMBED_JSON}]"
        holes = {
            "body": '"' + base64.b64encode(body.encode()).decode() + '"',
            "id": quoted_id,
            "eta": "null" if nominal_ms <= now_ms else _quote(_iso(nominal_ms)),
            "argsrepr": _quote(shown),
            # What Flower shows as the run's keyword arguments: its job (the body has none).
            "kwargsrepr": _quote(repr({"job_id": job_id_of(run_id)})),
            "tag": '"' + os.urandom(16).hex() + '"',  # unique across processes and forks
            # Celery's per-message (hard, soft) limits: the worker kills the run's process at the
            # hard one; the soft one (the job's timeout) is applied by the runner itself.
            "timelimit": f"[{hard_limit_s(timeout_s or self.settings.job_timeout_s)}, null]",
        }
        return Message(self.keys.broker_prefix + queue, template % holes)

    def _template(self, task: str, queue: str) -> str:
        headers, properties, _, _ = self.app.amqp.create_task_message(
            "-", task, ["-"], {}, kwargsrepr="{}", origin=self.hostname, ignore_result=True,
            create_sent_event=False,
        )  # fmt: skip
        headers = dict(headers)
        headers.update(
            id=_HOLE % "id",
            root_id=_HOLE % "id",
            eta=_HOLE % "eta",
            argsrepr=_HOLE % "argsrepr",
            kwargsrepr=_HOLE % "kwargsrepr",
            timelimit=_HOLE % "timelimit",
        )
        props = dict(properties)
        props.update(
            correlation_id=_HOLE % "id",
            delivery_mode=2,
            delivery_info={"exchange": "", "routing_key": queue},
            priority=0,
            body_encoding="base64",
            delivery_tag=_HOLE % "tag",
        )
        envelope = {
            "body": _HOLE % "body",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": props,
        }
        # Each quoted hole becomes a %(name)s slot; any other '%' is escaped for the % operator.
        text = json.dumps(envelope).replace("%", "%%")
        self._templates[(task, queue)] = re.sub(r'"@@hole:(\w+)@@"', r"%(\1)s", text)
        return self._templates[(task, queue)]

    def plain_task(self, run_id: str, call: CeleryCall, now_ms: int) -> Message:
        """The message ``app.send_task(call.task, call.args, call.kwargs, **call.options)`` would
        publish, with ``run_id`` as its task id, onto the list the app's own workers read.

        Built whole each time (not from a template): imported beat_schedule entries are few.
        """
        opts = call.options
        headers, properties, body, _ = self.app.amqp.create_task_message(
            run_id, call.task, call.args, call.kwargs,
            expires=opts.get("expires"), time_limit=opts.get("time_limit"),
            soft_time_limit=opts.get("soft_time_limit"), origin=self.hostname,
            ignore_result=bool(opts.get("ignore_result", False)), create_sent_event=False,
            now=ms_to_datetime(now_ms),
        )  # fmt: skip
        headers = {**headers, **(opts.get("headers") or {})}  # as send_task merges its headers=
        # kombu ships no type information either
        dumped = serialization.dumps(body, serializer=self.app.conf.task_serializer)  # type: ignore[no-untyped-call]
        content_type, encoding, data = dumped
        raw = data if isinstance(data, bytes) else data.encode(encoding)
        priority = int(opts.get("priority") or 0)
        props = {
            **properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": opts.get("exchange", ""), "routing_key": opts["routing_key"]},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": os.urandom(16).hex(),
        }
        envelope = {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": props,
        }
        return Message(self._app_queue_key(opts["queue"], priority), json.dumps(envelope))

    def _app_queue_key(self, queue: str, priority: int) -> str:
        """The Redis list kombu's transport would push onto for the app: its global_keyprefix,
        the queue, and the queue's priority step (kombu's ``Channel._q_for_pri``)."""
        transport = self.app.conf.broker_transport_options or {}
        steps = transport.get("priority_steps", _PRIORITY_STEPS)
        step = steps[bisect(steps, max(0, min(priority, 9))) - 1]
        name = f"{queue}{transport.get('sep', _PRIORITY_SEP)}{step}" if step else queue
        return str(transport.get("global_keyprefix", "")) + name


def _iso(value_ms: int) -> str:
    when = ms_to_datetime(value_ms)
    assert when is not None
    return when.isoformat()


_HOLE = "@@hole:%s@@"
_PRIORITY_STEPS = [0, 3, 6, 9]  # kombu's Redis transport defaults (priority_steps, sep)
_PRIORITY_SEP = "\x06\x16"
_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, as json.dumps writes it
# Celery protocol 2's third body element: no callbacks, errbacks, chain or chord.
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(EMBED)
