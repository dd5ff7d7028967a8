"""Our broker messages are the ones Celery itself would send (checked against Celery, not a copy)."""

from __future__ import annotations

import base64
import dataclasses
import json

from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from kombu.serialization import dumps

from ductape_jobs.celery_app import create_app
from ductape_jobs.events import sent_fields
from ductape_jobs.settings import Settings
from ductape_jobs.terms import CeleryCall, JobSpec, ms_to_datetime
from ductape_jobs.wire import EMBED, MessageBuilder

SPEC = JobSpec(env="prd", product_tag="billing", event="process_payment", retries=1,
               input={"orderId": "order_456", "amount": 99.99}, created_ms=0)  # fmt: skip


def celery_message(app, run_id: str, eta_ms: int | None, argsrepr: str, time_limit: int | None = None):
    headers, properties, body, _ = app.amqp.create_task_message(
        run_id, "billing.process_payment", [run_id], {}, eta=ms_to_datetime(eta_ms), argsrepr=argsrepr,
        kwargsrepr=repr({"job_id": run_id.rsplit(":", 1)[0]}), origin="ductape-jobs", ignore_result=True,
        create_sent_event=False,
        time_limit=time_limit,
    )  # fmt: skip
    return headers, properties, dumps(body, serializer="json")[2]


def test_message_matches_what_celery_builds_with_and_without_eta() -> None:
    settings = Settings(key_prefix="w")
    app = create_app(settings)
    builder = MessageBuilder(app, settings)
    for nominal_ms, now_ms in ((1_000, 5_000), (9_000, 5_000)):
        run_id = f"job1:{nominal_ms}"
        message = builder.build(run_id, SPEC, nominal_ms, now_ms)
        envelope = json.loads(message.payload)
        eta = nominal_ms if nominal_ms > now_ms else None
        # The job's hard time limit: its timeout (the settings' default) plus a tenth, at least 1 s
        headers, properties, body = celery_message(app, run_id, eta, repr(SPEC.input), time_limit=330)
        assert envelope["headers"] == headers
        assert base64.b64decode(envelope["body"]).decode() == body
        assert envelope["properties"]["correlation_id"] == properties["correlation_id"] == run_id
        assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "w.prd"}
        assert envelope["properties"]["body_encoding"] == "base64"
        assert message.queue_key == "w:broker:w.prd"


def test_a_jobs_timeout_sets_its_messages_hard_time_limit() -> None:
    settings = Settings(key_prefix="w", job_timeout_s=20)
    builder = MessageBuilder(create_app(settings), settings)
    limits = {
        timeout: json.loads(
            builder.build("job1:1", dataclasses.replace(SPEC, timeout_s=timeout), 1, 1).payload
        )
        for timeout in (None, 2, 3_600, 86_400)
    }
    assert {t: m["headers"]["timelimit"] for t, m in limits.items()} == {
        None: [22, None],  # the settings' default, for records written before timeouts
        2: [3, None],
        3_600: [3_660, None],  # the grace is capped at a minute
        86_400: [86_460, None],
    }


def test_each_message_has_its_own_delivery_tag() -> None:
    settings = Settings(key_prefix="w")
    builder = MessageBuilder(create_app(settings), settings)
    tags = {
        json.loads(builder.build("job1:1", SPEC, 1, 1).payload)["properties"]["delivery_tag"]
        for _ in range(50)
    }
    assert len(tags) == 50


def test_a_stand_in_input_and_awkward_text_still_make_celerys_message() -> None:
    settings = Settings(key_prefix="w")
    app = create_app(settings)
    builder = MessageBuilder(app, settings)
    given = {"q": 'say "hi" \\ \u00e9l\u00e8ve \U0001f600 %s %(x)s', "n": [1, None, 2.5]}
    envelope = json.loads(builder.build("job2:9000", SPEC, 9_000, 5_000, input=given).payload)
    headers, _, body = celery_message(app, "job2:9000", 9_000, repr(given), time_limit=330)
    assert envelope["headers"] == headers  # the stand-in input, not SPEC's, is shown
    assert base64.b64decode(envelope["body"]).decode() == body


def test_an_imported_entrys_message_is_what_send_task_publishes() -> None:
    app = Celery("proj", broker="memory://")
    app.conf.broker_transport_options = {"global_keyprefix": "p:app:"}
    options = {
        "queue": "q",
        "exchange": "q",
        "routing_key": "q",
        "priority": 6,
        "expires": 30,
        "headers": {"h": 1},
    }
    call = CeleryCall(entry="e", task="proj.add", args=[2, 3], kwargs={"k": "v"}, options=options)
    now_ms = 1_900_000_000_000
    message = MessageBuilder(app, Settings(key_prefix="w")).plain_task("job1:5", call, now_ms)
    ours = json.loads(message.payload)
    with app.connection_for_write() as conn:
        sent = {k: v for k, v in options.items() if k not in ("exchange", "routing_key")}
        app.send_task("proj.add", [2, 3], {"k": "v"}, task_id="job1:5", connection=conn, **sent)
        theirs = conn.SimpleQueue("q").get(timeout=5)
    assert message.queue_key == "p:app:q\x06\x166"  # kombu's list for priority 6 (its step)
    assert base64.b64decode(ours["body"]) == theirs.body
    same = set(theirs.headers) - {"expires", "origin", "ignore_result"}  # the time, host, app's default
    assert {k: ours["headers"][k] for k in same} == {k: theirs.headers[k] for k in same}
    assert ours["headers"]["expires"] == ms_to_datetime(now_ms + 30_000).isoformat()  # type: ignore[union-attr]
    assert (ours["properties"]["priority"], ours["content-type"]) == (6, theirs.content_type)


def test_a_messages_task_sent_fields_are_those_celery_sends_for_it() -> None:
    # Celery's send_task_message sends create_task_message's sent_event plus queue, exchange
    # and routing key; ours are read back from the message we push (events.SentEvents).
    settings = Settings(key_prefix="w")
    app = create_app(settings)
    builder = MessageBuilder(app, settings)
    queue = app.amqp.queues["w.prd"]
    for nominal_ms, now_ms in ((1_000, 5_000), (9_000, 5_000)):
        run_id = f"job1:{nominal_ms}"
        message = builder.build(run_id, SPEC, nominal_ms, now_ms)
        celery_event = app.amqp.create_task_message(
            run_id, "billing.process_payment", [run_id], {},
            eta=ms_to_datetime(nominal_ms if nominal_ms > now_ms else None), argsrepr=repr(SPEC.input),
            kwargsrepr="{'job_id': 'job1'}", create_sent_event=True,
        ).sent_event  # fmt: skip
        celery_event.update(queue="w.prd", exchange=queue.exchange.name, routing_key=queue.routing_key)
        assert sent_fields(message, {"w.prd": queue.exchange.name}) == celery_event
        assert celery_event["kwargs"] == "{'job_id': 'job1'}"  # Flower's task page names the job


TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def test_publish_signal_receivers_see_the_messages_headers_and_what_they_change_is_sent() -> None:
    settings = Settings(key_prefix="w")
    app = create_app(settings)
    builder = MessageBuilder(app, settings)
    plain = json.loads(builder.build("job1:9000", SPEC, 9_000, 5_000).payload)["headers"]  # no receivers
    seen: list[dict] = []

    def adds(headers: dict, **_: object) -> None:  # as OpenTelemetry's: spliced in, no re-encoding
        seen.append(dict(headers))
        headers["traceparent"] = TRACEPARENT

    def changes(headers: dict, **_: object) -> None:  # a header Celery set: the envelope is re-encoded
        headers["argsrepr"] = "{'changed': 1}"

    for receivers, expected in (((adds,), {"traceparent": TRACEPARENT}), ((adds, changes), {
        "traceparent": TRACEPARENT, "argsrepr": "{'changed': 1}"})):  # fmt: skip
        for receiver in receivers:
            before_task_publish.connect(receiver)
        try:
            message = builder.build("job1:9000", SPEC, 9_000, 5_000)
        finally:
            for receiver in receivers:
                before_task_publish.disconnect(receiver)
        assert seen.pop() == plain  # exactly the headers Celery's own message has
        envelope = json.loads(message.payload)
        assert envelope["headers"] == {**plain, **expected}
        assert json.loads(base64.b64decode(envelope["body"])) == [["job1:9000"], {}, EMBED]


def test_an_imported_entrys_message_fires_the_publish_signals_as_send_task_does() -> None:
    app = Celery("proj", broker="memory://")
    options = {"queue": "q", "exchange": "q", "routing_key": "q", "priority": 6, "headers": {"h": 1}}
    call = CeleryCall(entry="e", task="proj.add", args=[2, 3], kwargs={"k": "v"}, options=options)
    heard: list[tuple[str, dict]] = []

    def before(**kwargs: object) -> None:
        kwargs.pop("signal")
        kwargs["headers"]["traceparent"] = TRACEPARENT  # type: ignore[index]
        heard.append(("before", kwargs))

    def after(**kwargs: object) -> None:
        kwargs.pop("signal")
        heard.append(("after", kwargs))

    before_task_publish.connect(before)
    after_task_publish.connect(after)
    try:
        message = MessageBuilder(app, Settings(key_prefix="w")).plain_task("job1:5", call, 1_900_000_000_000)
        message.sent()
        with app.connection_for_write() as conn:
            sent = {k: v for k, v in options.items() if k not in ("exchange", "routing_key")}
            app.send_task("proj.add", [2, 3], {"k": "v"}, task_id="job1:5", connection=conn, **sent)
    finally:
        before_task_publish.disconnect(before)
        after_task_publish.disconnect(after)
    [(_, ours), (_, ours_after), (_, theirs), (_, theirs_after)] = heard
    assert set(ours) == set(theirs) and set(ours_after) == set(theirs_after)
    for key in ("sender", "body", "routing_key"):
        assert ours[key] == theirs[key] and ours_after[key] == theirs_after[key]
    assert set(ours["headers"]) == set(theirs["headers"])
    assert json.loads(message.payload)["headers"]["traceparent"] == TRACEPARENT
