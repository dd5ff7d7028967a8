"""No session value leaves a real worker in any form a handler's exception or result can show it.

A handler raises exceptions built from session values in every form we know (str, repr, repr of
a repr, JSON with and without escapes, upper case, a dict as the exception's argument, pydantic's
shortened ``input_value``, chained exceptions, texts long enough to be cut) and returns them as a
result. Then every key in Redis (the broker's included), the worker's log, the Celery events (the
producer's task-sent ones included) and the CLI's output are read for each value: whole, in every
escape and case, and for any piece of 8 characters or more (what a cut or an ellipsis leaves),
base64-decoded where kombu encodes.
"""

from __future__ import annotations

import json
import random
import re
import string
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from ductape_jobs import Ductape, JobStatus, Settings
from tests.e2e.test_cli import run_cli
from tests.e2e.test_sessions_e2e import EventTap, _decodings, every_key, finished
from tests.handlers import Card
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

WINDOW = 8  # a piece of a value this long found anywhere is a leak
HOWS_FAILING = [
    "str", "repr", "json", "json unicode", "upper", "repr of repr", "args", "past the cut",
    "past the traceback cut", "pydantic", "chained",
]  # fmt: skip
OTHER_PREFIX = re.compile(r"t[0-9a-f]{10}:")  # conftest's per-test key prefixes
RETRIED = {"str", "chained"}  # these go through a retry first (task-retried events, retry records)


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def session_values() -> dict[str, Any]:
    """Values of every awkward shape, each unique to this run."""
    tag = uuid.uuid4().hex
    # Every 8 characters of each value hold random ones: a piece found is this test's value.
    return {
        "short": random.choice(string.ascii_letters) + "\u00a7" + random.choice(string.digits),
        "email": f"{tag[:8]}@{tag[8:14]}.io",
        "card": f"tok_{tag[14:30]}",
        "quoted": f'O\'{tag[:4]} "B{tag[4:8]}"',
        "zoe": f"Z{tag[8:11]}\u00eb{tag[11:14]}\tQ{tag[14:17]}",
        "long": "".join(random.choice(string.ascii_letters + string.digits) for _ in range(150)),
        "pin": int("9" + "".join(random.choice(string.digits) for _ in range(11))),
    }


def text_forms(value: Any) -> set[str]:
    """How a value can be written (derived here, independently of ductape_jobs.scrub)."""
    if isinstance(value, int):
        return {str(value)}
    escapes = (
        lambda s: repr(s)[1:-1],
        lambda s: repr(s + "'\"")[1:-4],
        lambda s: ascii(s)[1:-1],
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    )
    found: set[str] = set()
    for base in (value, value.upper(), value.lower()):
        once = {base} | {e(base) for e in escapes}
        found |= once | {e(form) for form in once for e in escapes}
    return found


class Needles:
    """What may not be found: whole short values as tokens, any WINDOW-long piece of the others."""

    def __init__(self, values: Iterable[Any]) -> None:
        self.windows: set[bytes] = set()
        shorts: list[str] = []
        for value in values:
            for form in text_forms(value):
                if len(str(value)) < 4:
                    shorts.append(re.escape(form))
                raw = form.lower().encode()
                self.windows |= {raw[i : i + WINDOW] for i in range(max(len(raw) - WINDOW + 1, 0))}
        alternatives = "|".join(shorts).encode()
        self.short = re.compile(rb"(?<![\w\x80-\xff])(" + alternatives + rb")(?![\w\x80-\xff])", re.I)

    def found(self, where: str, blob: bytes) -> list[str]:
        """Where in ``blob`` (or what it base64-decodes to) a needle shows."""
        hits: list[str] = []
        for decoded in _decodings(blob):
            low = decoded.lower()
            pieces = {low[i : i + WINDOW] for i in range(max(len(low) - WINDOW + 1, 0))}
            hits += [f"{where}: piece {p!r}" for p in pieces & self.windows]
            hits += [f"{where}: short value {m.group(1)!r}" for m in self.short.finditer(decoded)]
        return hits


def test_no_session_value_reaches_redis_logs_events_or_the_cli(
    procs: Processes, ductape: Ductape, settings: Settings, r: redis.Redis, env_prefix: str, redis_url: str
) -> None:
    worker = procs.worker(DUCTAPE_TASK_EVENTS="true")
    values = session_values()
    token = ductape.sessions.start("user-session", {"v": values})
    needles = Needles(values.values())
    session = {"tag": "user-session", "token": token}

    # Positive controls: the scan finds a value shown plainly, cut by pydantic, or in base64.
    try:
        Card.model_validate({"number": values["long"], "cvv": values["short"], "holder": values["quoted"]})
    except ValidationError as exc:
        shown = str(exc)
    assert "..." in shown and needles.found("control", shown.encode())
    assert needles.found("control", f"cvv {values['short']}.".encode())
    assert needles.found("control", json.dumps({"pin": values["pin"]}).encode())
    assert not needles.found("control", b"nothing here 2026-12-01 08:45:43,123: INFO")

    # The producer sends task-sent events (DUCTAPE_TASK_EVENTS), so they are scanned too.
    sender = Ductape(settings=settings.replace(**{"task_events": True}))
    with EventTap(settings) as tap, sender:
        handles = {
            how: sender.job.schedule(
                env="dev", product_tag="tests", event="leak", input={"v": "$Session{v}", "how": how},
                session=session, retries=1 if how in RETRIED else 0,
            )
            for how in [*HOWS_FAILING, "return"]
        }  # fmt: skip
        jobs = {how: finished(ductape, handles[how].job_id, JobStatus.FAILED, 90) for how in HOWS_FAILING}
        jobs["return"] = finished(ductape, handles["return"].job_id, JobStatus.COMPLETED, 90)
        for how, job in jobs.items():
            kinds = ("task-succeeded",) if how == "return" else ("task-failed",)
            run_id = job.last_run_id or ""
            tap.wait(run_id, "task-sent", *kinds, *(("task-retried",) if how in RETRIED else ()))
            # Sent by the producer, and again by Celery's retry: each shows the masked input and the job.
            sent = wait_for(
                lambda r=run_id, n=2 if how in RETRIED else 1: (
                    len(s := [e for e in list(tap.events) if e["type"] == "task-sent" and e["uuid"] == r])
                    >= n
                    and s
                ),
                30,
                f"task-sent events of {run_id}",
            )
            assert {(e["args"], e["kwargs"]) for e in sent} == {
                (repr({"v": "***", "how": how}), repr({"job_id": job.job_id}))
            }
        assert tap.error is None

    # The runs did happen, with the real values, and their errors were masked, not dropped.
    assert jobs["return"].result == {"v": values, "repr": repr(values), "json": json.dumps(values)}
    for how in HOWS_FAILING:
        error = jobs[how].last_error or ""
        assert "***" in error and len(error) <= 2_000, (how, error)
    assert jobs["pydantic"].last_error.startswith("ValidationError: 3 validation errors for Card")  # type: ignore[union-attr]
    dead = ductape.job.failed(limit=100)
    assert {d.job_id for d in dead} == {j.job_id for how, j in jobs.items() if how != "return"}
    how_of = {job.job_id: how for how, job in jobs.items()}
    for d in dead:
        trace = d.traceback or ""
        assert len(trace) <= 8_000
        # Scrubbed first, then cut: that run's values are masked before its last 8,000 characters.
        assert "***" in trace or (how_of[d.job_id] == "past the traceback cut" and trace.startswith("y")), (
            trace
        )

    # Ours, and whatever no test prefix claims (other tests share this server).
    stored = {
        k: v
        for k, v in every_key(r, env_prefix).items()
        if not OTHER_PREFIX.match(k) or k.startswith(env_prefix)
    }
    assert any(k.startswith(f"{env_prefix}:broker:") for k in stored), "the broker's keys were not scanned"
    found = [hit for key, blob in stored.items() for hit in needles.found(f"key {key}", blob)]
    log = procs.log(worker)
    assert all(job.last_run_id in log for job in jobs.values())  # the log is the one that ran them
    found += needles.found("worker log", log.encode())
    failed_events = [e for e in tap.events if e.get("type") == "task-failed"]
    assert len(failed_events) >= len(HOWS_FAILING)
    for i, event in enumerate(tap.events):
        found += needles.found(f"event {i}", json.dumps(event, default=repr).encode())
    # The CLI holds the session secret here, as it would beside a producer: it still shows `***`.
    returned = jobs["return"].job_id
    lines = ["failed --json", "list --json", f"runs {returned} --json", f"show {returned}"]
    for line in [*lines, *(f"show {j.job_id} --json" for j in jobs.values())]:
        done = run_cli(redis_url, env_prefix, line, DUCTAPE_SESSIONS=json.dumps(settings.sessions))
        assert done.returncode == 0, done.stderr
        found += needles.found(f"cli {line}", (done.stdout + done.stderr).encode())
    assert found == []
