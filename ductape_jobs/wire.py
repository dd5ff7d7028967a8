"""Celery messages built for a Redis broker, so a run and its message are written in one script.

Celery's protocol-2 headers and body come from Celery itself (``app.amqp.create_task_message``);
the envelope is the one kombu's Redis transport pushes onto a queue list (JSON with a base64 body,
a delivery tag and the routing info). Writing the message inside our Lua scripts makes "record the
run" and "hand it to Celery" one atomic step: no run is ever stored without its message or sent
without its record, and a fenced-out beat cannot send anything.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import json
import os
import re
from bisect import bisect
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery._state import _set_current_app, get_current_app
from celery.signals import after_task_publish, before_task_publish
from kombu import serialization

from ductape_jobs import tracing
from ductape_jobs.brief import JobBrief, argsrepr
from ductape_jobs.keys import Keys
from ductape_jobs.records import Message
from ductape_jobs.settings import Settings
from ductape_jobs.terms import CeleryCall, JobSpec, hard_limit_s, job_id_of, ms_to_datetime, task_name


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
        self.keys = Keys(settings.key_prefix, settings.shards)
        self.hostname = "ductape-jobs"
        self._templates: dict[tuple[str, str], str] = {}
        self._signalled: dict[tuple[str, str], dict[str, Any]] = {}

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

    def queue_key(self, brief: JobBrief) -> str:
        """The broker list a job's messages go to (its env's queue)."""
        return self.keys.broker_prefix + self.settings.queue_for(brief.env)

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
        eta = None if nominal_ms <= now_ms else _iso(nominal_ms)
        # Celery's per-message (hard, soft) limits: the worker kills the run's process at the
        # hard one; the soft one (the job's timeout) is applied by the runner itself.
        hard_s = hard_limit_s(timeout_s or self.settings.job_timeout_s)
        named = repr({"job_id": job_id_of(run_id)})
        holes = {
            "body": '"' + base64.b64encode(body.encode()).decode() + '"',
            "id": quoted_id,
            "eta": "null" if eta is None else _quote(eta),
            "argsrepr": _quote(shown),
            # What Flower shows as the run's keyword arguments: its job (the body has none).
            "kwargsrepr": _quote(named),
            "tag": '"' + os.urandom(16).hex() + '"',  # unique across processes and forks
            "timelimit": f"[{hard_s}, null]",
        }
        message = Message(self.keys.broker_prefix + queue, template % holes)
        if before_task_publish.receivers or after_task_publish.receivers:
            filled = {
                "id": run_id,
                "root_id": run_id,
                "eta": eta,
                "argsrepr": shown,
                "kwargsrepr": named,
                "timelimit": [hard_s, None],
            }
            return self._announce(message, task, queue, filled)
        return message

    def _announce(self, message: Message, task: str, queue: str, filled: dict[str, Any]) -> Message:
        """Fire Celery's before_task_publish with the arguments ``send_task_message`` gives it; the
        headers a receiver adds (OpenTelemetry's ``traceparent``) go into the message. The returned
        message's ``sent()`` fires after_task_publish once it is written."""
        signalled = self._signalled.get((task, queue)) or self._signalled_for(task, queue)
        headers = {**signalled["headers"], **filled}
        before = dict(headers)
        run_id = filled["id"]
        where = {
            "sender": task, "body": ([run_id], {}, EMBED), "exchange": "", "routing_key": queue,
            "headers": headers,
        }  # fmt: skip
        extra = {
            "properties": {"correlation_id": run_id, "reply_to": ""},
            "declare": signalled["declare"],
            "retry_policy": dict(signalled["retry_policy"]),
        }
        after = self._before(where, extra)
        if headers != before:
            message = Message(message.queue_key, _with_headers(message.payload, before, headers))
        # The span it is built in (beat's release, schedule()'s) is its run's trace: kept in the
        # run record, so a retry beat hands back or a resend continues it (tracing.traceparent()
        # is None at once without a tracer provider).
        return Message(message.queue_key, message.payload, after, tracing.traceparent() or "")

    def _before(self, where: dict[str, Any], extra: dict[str, Any]) -> Callable[[], None]:
        """Fire before_task_publish (``where`` and ``extra`` are its arguments); what fires
        after_task_publish (with ``where``'s)."""
        # A receiver may make its span current (OpenTelemetry's does, until after_task_publish):
        # both signals run in one copy of the caller's context, so that never leaks into it.
        context = contextvars.copy_context()
        context.run(self._signal, before_task_publish, where | extra)
        return functools.partial(context.run, self._signal, after_task_publish, where)

    def _signal(self, signal: Any, arguments: dict[str, Any]) -> None:
        # Receivers look the sender up in the current app's registry, as for a task this process
        # would publish with apply_async (OpenTelemetry's ends its publish span only if found):
        # this app, which knows every task it builds messages for, is current while they run.
        current = get_current_app()
        _set_current_app(self.app)
        try:
            signal.send(**arguments)
        finally:
            _set_current_app(current)

    def _signalled_for(self, task: str, queue: str) -> dict[str, Any]:
        """What the publish signals get for every message of (task, queue), made once."""
        if task not in self.app.tasks:  # a stand-in, never run here: receivers find the task
            self.app.task(name=task, shared=False)(_built_here)
        headers, _, _, _ = self.app.amqp.create_task_message(
            "-", task, ["-"], {}, kwargsrepr="{}", origin=self.hostname, ignore_result=True,
            create_sent_event=False,
        )  # fmt: skip
        self._signalled[(task, queue)] = {
            "headers": dict(headers),
            "declare": [self.app.amqp.queues[queue]],
            "retry_policy": dict(self.app.conf.task_publish_retry_policy),
        }
        return self._signalled[(task, queue)]

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
        after = None
        if before_task_publish.receivers or after_task_publish.receivers:  # as for our own (_announce)
            where = {
                "sender": call.task, "body": body, "exchange": opts.get("exchange", ""),
                "routing_key": opts["routing_key"], "headers": headers,
            }  # fmt: skip
            queue = self.app.amqp.queues.get(opts["queue"])  # dict.get: never creates one
            extra = {
                "properties": dict(properties),
                "declare": [] if queue is None else [queue],
                "retry_policy": dict(self.app.conf.task_publish_retry_policy),
            }
            after = self._before(where, extra)
        envelope = {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": props,
        }
        return Message(self._app_queue_key(opts["queue"], priority), json.dumps(envelope), after)

    def _app_queue_key(self, queue: str, priority: int) -> str:
        """The Redis list kombu's transport would push onto for the app: its global_keyprefix,
        the queue, and the queue's priority step (kombu's ``Channel._q_for_pri``)."""
        transport = self.app.conf.broker_transport_options or {}
        steps = transport.get("priority_steps", _PRIORITY_STEPS)
        step = steps[bisect(steps, max(0, min(priority, 9))) - 1]
        name = f"{queue}{transport.get('sep', _PRIORITY_SEP)}{step}" if step else queue
        return str(transport.get("global_keyprefix", "")) + name


def _with_headers(payload: str, before: dict[str, Any], headers: dict[str, Any]) -> str:
    """The envelope with the headers a receiver changed: added ones are spliced in after the
    opening of the headers object (no parse); a changed or removed one re-encodes the whole."""
    if all(key in headers and headers[key] == value for key, value in before.items()):
        added = "".join(f"{_quote(k)}: {json.dumps(v)}, " for k, v in headers.items() if k not in before)
        head, mark, tail = payload.partition(_HEADERS_OPEN)
        return head + mark + added + tail
    envelope = json.loads(payload)
    envelope["headers"] = headers
    return json.dumps(envelope)


def _built_here(*_: Any, **__: Any) -> None:
    """Stands for a task whose messages this process builds; it never runs here."""
    raise NotImplementedError("a ductape-jobs run is executed by the workers")


def _iso(value_ms: int) -> str:
    when = ms_to_datetime(value_ms)
    assert when is not None
    return when.isoformat()


_HOLE = "@@hole:%s@@"
_PRIORITY_STEPS = [0, 3, 6, 9]  # kombu's Redis transport defaults (priority_steps, sep)
_PRIORITY_SEP = "\x06\x16"
_HEADERS_OPEN = '"headers": {'  # where the envelope's headers start, as json.dumps writes it
_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, as json.dumps writes it
# Celery protocol 2's third body element: no callbacks, errbacks, chain or chord.
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(EMBED)
