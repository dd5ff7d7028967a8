"""Sessions end to end: $Session{...} placeholders resolved at schedule time, nothing secret kept.

Real worker and beat processes, a real Celery event receiver, and a read of every key in Redis
(the broker's included) after the runs: neither the token nor a session value may appear.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ductape_jobs import BackendUnavailableError, Ductape, JobStatus, RunStatus, SessionError, Settings
from ductape_jobs.celery_app import create_app
from ductape_jobs.embedded import EmbeddedRedis, free_port
from ductape_jobs.sessions import Sessions, session_types_from_config
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

SECRET = "test-secret-not-for-prod-0123456789abcdef"  # the "user-session" secret in conftest
SEED_INPUT = {"userId": "$Session{user}{id}", "email": "$Session{user}{email}"}


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def calls(r: redis.Redis, name: str) -> list[dict[str, Any]]:
    """What handler ``name`` recorded, in order."""
    return [json.loads(x) for x in r.lrange(calls_key(name), 0, -1)]


def finished(ductape: Ductape, job_id: str, status: JobStatus, timeout_s: float = 60) -> Any:
    """Wait until the job reaches ``status``."""
    return wait_for(
        lambda: (job := ductape.job.get(job_id)).status == status and job, timeout_s, f"job {status.value}"
    )


def user_data() -> dict[str, Any]:
    """Session data with values no other test (or Celery) could produce by chance."""
    return {"user": {"id": f"user_{uuid.uuid4().hex[:12]}", "email": f"{uuid.uuid4().hex[:12]}@example.com"}}


def secrets_of(token: str, data: dict[str, Any]) -> dict[str, bytes]:
    """What must never be found: the token, its parts, the session values, the signing secret."""
    body = token.split(":", 1)[1]
    _, payload, signature = body.split(".")
    return {
        "token": token.encode(),
        "jwt": body.encode(),
        "jwt payload": payload.encode(),
        "jwt signature": signature.encode(),
        "user id": data["user"]["id"].encode(),
        "email": data["user"]["email"].encode(),
        "secret": SECRET.encode(),
    }


_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def _decodings(blob: bytes, depth: int = 2) -> Iterator[bytes]:
    """The blob and whatever base64 runs in it decode to (kombu stores message bodies in base64)."""
    yield blob
    if depth == 0:
        return
    for match in _B64_RUN.finditer(blob):
        run = match.group(0).rstrip(b"=")
        for alphabet in (run, run.replace(b"-", b"+").replace(b"_", b"/")):
            try:
                decoded = base64.b64decode(alphabet + b"=" * (-len(alphabet) % 4), validate=True)
            except ValueError:
                continue
            yield from _decodings(decoded, depth - 1)


def leaks(where: str, blob: bytes, needles: dict[str, bytes]) -> list[str]:
    """Which needles occur in blob, plainly or base64-encoded."""
    return [
        f"{name} in {where}" for name, needle in needles.items() if any(needle in d for d in _decodings(blob))
    ]


def every_key(r: redis.Redis, prefix: str) -> dict[str, bytes]:
    """Every key in the database with its whole content, except the test handlers' recordings."""
    own = f"{prefix}:test:".encode()
    out: dict[str, bytes] = {}
    for key in r.scan_iter(count=1000):
        if key.startswith(own):
            continue
        kind = r.type(key)
        if kind == b"string":
            parts: list[Any] = [r.get(key)]
        elif kind == b"hash":
            parts = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == b"list":
            parts = r.lrange(key, 0, -1)
        elif kind == b"set":
            parts = list(r.smembers(key))
        elif kind == b"zset":
            parts = [str(x).encode() for pair in r.zrange(key, 0, -1, withscores=True) for x in pair]
        elif kind == b"stream":
            parts = [json.dumps(entry, default=repr).encode() for entry in r.xrange(key)]
        elif kind == b"none":  # expired while we looked
            continue
        else:
            raise AssertionError(f"key {key!r} has a type this scan does not read: {kind!r}")
        out[key.decode(errors="replace")] = (
            key + b"\n" + b"\n".join(p if isinstance(p, bytes) else b"" for p in parts)
        )
    return out


def assert_nothing_stored(r: redis.Redis, prefix: str, needles: dict[str, bytes]) -> dict[str, bytes]:
    """Read every key; fail on any needle; return what was read."""
    stored = every_key(r, prefix)
    assert any(k.startswith(f"{prefix}:broker:") for k in stored), "the broker's keys were not scanned"
    found = [hit for key, blob in stored.items() for hit in leaks(f"key {key}", blob, needles)]
    assert found == []
    return stored


def snapshot(r: redis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    """Every key of the deployment with its serialized value."""
    return {key: r.dump(key) for key in r.scan_iter(match=f"{prefix}:*", count=1000)}


class EventTap:
    """What ``celery events`` sees: a Receiver on the deployment's broker, run in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings, name="event-tap")
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._conn = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(self._conn, handlers={"*": self.events.append})
        self._thread = threading.Thread(target=self._run, name="event-tap", daemon=True)

    def _run(self) -> None:
        try:
            self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def __enter__(self) -> EventTap:
        self._thread.start()
        # kombu subscribes to the event channel lazily, on its first poll: send our own probe
        # event until it comes back, so no event of the test can go out before we listen.
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, enabled=True)

            def heard() -> bool:
                assert self.error is None, self.error
                dispatcher.send("ductape-probe")
                return any(e.get("type") == "ductape-probe" for e in self.events)

            wait_for(heard, 30, "the event receiver to subscribe")
            dispatcher.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True
        self._thread.join(10)
        self._conn.release()
        self.app.close()

    def of(self, task_id: str) -> dict[str, dict[str, Any]]:
        """The task events of one task id, by type (the last of each type)."""
        return {e["type"]: e for e in list(self.events) if e.get("uuid") == task_id}

    def wait(self, task_id: str, *types: str) -> dict[str, dict[str, Any]]:
        """Wait until every event type in ``types`` arrived for the task."""

        def arrived() -> dict[str, dict[str, Any]] | None:
            got = self.of(task_id)
            return got if set(types) <= set(got) else None

        return wait_for(arrived, 60, f"events {types} of {task_id}")

    def leaks(self, needles: dict[str, bytes]) -> list[str]:
        """Needles found in any captured event (every field, args/kwargs reprs included)."""
        blobs = [json.dumps(e, default=repr, sort_keys=True).encode() for e in list(self.events)]
        return [hit for i, blob in enumerate(blobs) for hit in leaks(f"event {i}", blob, needles)]


def error_texts(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, traceback and the whole context chain."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    parts.append("".join(traceback.format_exception(exc)))
    return "\n".join(parts)


# -- the seed's example -----------------------------------------------------------------------


def test_seed_example_runs_with_full_values_and_nothing_secret_is_kept(
    procs: Processes, ductape: Ductape, settings: Settings, r: redis.Redis, env_prefix: str
) -> None:
    worker = procs.worker(DUCTAPE_TASK_EVENTS="true")
    data = user_data()
    token = ductape.sessions.start("user-session", data)
    assert token.startswith("user-session:")
    assert ductape.sessions.verify("user-session", token) == data
    needles = secrets_of(token, data)

    with EventTap(settings) as tap:
        handle = ductape.job.schedule(
            env="prd",
            product_tag="notifications",
            event="send_digest",
            start_at=0,
            retries=3,
            input={"userId": "$Session{user}{id}", "email": "$Session{user}{email}"},
            session={"tag": "user-session", "token": token},
        )
        assert handle.status == JobStatus.QUEUED
        job = finished(ductape, handle.job_id, JobStatus.COMPLETED)
        run_id = job.last_run_id
        # No task-sent: this producer's events are off (DUCTAPE_TASK_EVENTS; test_session_leaks
        # has them on).
        events = tap.wait(run_id, "task-received", "task-started", "task-succeeded")
        assert tap.error is None

    # The handler got the resolved values in full; the caller (holding the secret) its result.
    [call] = calls(r, "send_digest")
    assert call["input"] == {"userId": data["user"]["id"], "email": data["user"]["email"]}
    # Positive control: the scan below does find the values where they are (the recording).
    recorded = r.lindex(calls_key("send_digest"), 0)
    assert {"user id in recording", "email in recording"} <= set(leaks("recording", recorded, needles))
    assert job.result == {"sent_to": data["user"]["email"], "user": data["user"]["id"]}
    [run] = ductape.job.runs(handle.job_id)
    assert run.status == RunStatus.COMPLETED and run.result == job.result
    # Stored: the input masked, the real one sealed, the result sealed.
    assert job.spec.input == {"userId": "***", "email": "***"}
    assert job.spec.sealed and job.spec.input_digest and job.spec.session_tag == "user-session"
    assert json.loads(r.hget(f"{env_prefix}:job:{handle.job_id}", "result"))["$sealed"]

    # Every key in Redis, the broker's included: no token, no session value.
    stored = assert_nothing_stored(r, env_prefix, needles)
    assert any(run_id.encode() in blob for blob in stored.values())  # the scan did see this job

    # The Celery event stream: what Flower shows is masked, and nothing secret travels.
    assert events["task-received"]["args"] == "{'userId': '***', 'email': '***'}"
    assert events["task-received"]["kwargs"] == repr({"job_id": handle.job_id})  # Flower names the job
    assert events["task-succeeded"]["result"] == "'***'"
    assert tap.leaks(needles) == []

    # The worker's log: it ran the task, and shows neither the token nor the values.
    log = procs.log(worker)
    assert run_id in log and "succeeded" in log
    assert leaks("worker log", log.encode(), needles) == []


def test_recurring_job_keeps_running_after_its_token_expired(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
) -> None:
    worker = procs.worker(DUCTAPE_TASK_EVENTS="true")
    beat = procs.beat()
    data = user_data()
    token = ductape.sessions.start("user-session", data, expiry=2)
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    handle = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        input={"to": "$Session{user}{email}", "greeting": "Hi $Session{user}{id}!", "n": 1},
        session={"tag": "user-session", "token": token},
        repeat={"every": 1000, "limit": 3},
    )
    assert handle.recurring
    runs = wait_for(lambda: len(got := calls(r, "echo")) >= 3 and got, 90, "three runs")
    expected = {"to": data["user"]["email"], "greeting": f"Hi {data['user']['id']}!", "n": 1}
    assert [c["input"] for c in runs] == [expected] * 3
    assert len({c["run_id"] for c in runs}) == 3
    # The last run came after the token had expired: resolution happened once, at schedule time.
    assert runs[-1]["scheduled_ms"] >= claims["exp"] * 1000 and runs[-1]["at_ms"] >= claims["exp"] * 1000
    with pytest.raises(SessionError, match="expired"):
        ductape.sessions.verify("user-session", token)
    finished(ductape, handle.job_id, JobStatus.COMPLETED)
    assert len(calls(r, "echo")) == 3  # limit 3

    needles = secrets_of(token, data)
    assert_nothing_stored(r, env_prefix, needles)
    for name, proc in (("worker log", worker), ("beat log", beat)):
        assert leaks(name, procs.log(proc).encode(), needles) == []
    assert "released" in procs.log(beat)  # beat did hand over the later runs


# -- refusals ---------------------------------------------------------------------------------


def _tampered_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    # The first character always changes the first decoded byte (the last may only hit padding).
    return ".".join((head, payload, ("B" if signature[0] != "B" else "C") + signature[1:]))


def _forged_payload(token: str) -> str:
    head, _, signature = token.split(".")
    claims = {"tag": "user-session", "data": {"user": {"id": "admin", "email": "x@y.z"}}, "exp": 4102444800}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join((head, forged, signature))


REFUSALS = {
    # case: (what makes it wrong, fragment the message must contain, field)
    "tampered signature": ("signature does not match", "session.token"),
    "forged payload": ("signature does not match", "session.token"),
    "expired": ("expired", "session.token"),
    "tag mismatch": ("not 'user-session'", "session.tag"),
    "unknown session tag": ("unknown session type 'no-such-session'", "session.tag"),
    "missing path": ("$Session{user}{phone} has no value: session data has no key 'phone'", "input.phone"),
    "placeholders without session": ("no session was given", "session"),
    "malformed token": ("malformed token", "session.token"),
    "token passed as the tag": ("<secret>", "session.tag"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_names_the_problem_never_the_token_and_writes_nothing(
    case: str, ductape: Ductape, r: redis.Redis, prefix: str
) -> None:
    data = user_data()
    token = ductape.sessions.start("user-session", data)
    both = Sessions(
        session_types_from_config(
            {
                "user-session": {"secret": SECRET},
                "admin-session": {"secret": "another-secret-for-admins-0123456789"},
            }
        )
    )
    request: dict[str, Any] = {
        "env": "prd", "product_tag": "notifications", "event": "send_digest", "retries": 3,
        "input": dict(SEED_INPUT), "session": {"tag": "user-session", "token": token},
    }  # fmt: skip
    bad = token
    if case == "tampered signature":
        bad = _tampered_signature(token)
    elif case == "forged payload":
        bad = _forged_payload(token)
    elif case == "expired":
        bad = ductape.sessions.start("user-session", data, expiry=60, now_s=time.time() - 120)
    elif case == "tag mismatch":
        bad = both.start("admin-session", data)
    elif case == "unknown session tag":
        request["session"]["tag"] = "no-such-session"
    elif case == "missing path":
        request["input"]["phone"] = "$Session{user}{phone}"
    elif case == "placeholders without session":
        del request["session"]
    elif case == "malformed token":
        bad = "user-session:" + token.split(".", 1)[1]
    elif case == "token passed as the tag":
        request["session"] = {"tag": token, "token": token}
    if "session" in request and case != "token passed as the tag":
        request["session"]["token"] = bad

    # A valid job already stored (and sent), so "nothing changed" is checked against real keys.
    ductape.job.schedule(
        {**request, "input": dict(SEED_INPUT), "session": {"tag": "user-session", "token": token}}
    )
    before = snapshot(r, prefix)
    assert any(k.startswith(f"{prefix}:broker:".encode()) for k in before)

    fragment, field = REFUSALS[case]
    with pytest.raises(SessionError) as err:
        ductape.job.schedule(request)
    assert fragment in str(err.value) and err.value.field == field, str(err.value)
    needles = secrets_of(token, data) | {"the token given": bad.encode()}
    assert leaks("the error", error_texts(err.value).encode(), needles) == []
    assert snapshot(r, prefix) == before


def test_bare_jwt_with_the_tag_given_separately(ductape: Ductape) -> None:
    data = user_data()
    bare = ductape.sessions.start("user-session", data).split(":", 1)[1]
    assert ductape.sessions.verify("user-session", bare) == data
    handle = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", input={"to": "$Session{user}{email}"},
        session={"tag": "user-session", "token": bare}, start_at=time.time() + 3600,
    )  # fmt: skip
    job = ductape.job.get(handle.job_id)
    assert job.spec.input == {"to": "***"} and job.spec.redact_paths == [["to"]]
    assert ductape.vault.open_input(job.spec) == {"to": data["user"]["email"]}
    # Positive control for the scan: a value inside base64 (as kombu stores bodies) is found.
    email = data["user"]["email"].encode()
    assert leaks("body", b'"' + base64.b64encode(b'{"to": "' + email + b'"}') + b'"', {"email": email})


# -- cache and failures -----------------------------------------------------------------------


def test_cache_entries_are_per_session_values(
    procs: Processes, ductape: Ductape, r: redis.Redis, env_prefix: str
) -> None:
    procs.worker(DUCTAPE_TASK_EVENTS="true")
    alice, bob = user_data(), user_data()

    def run(data: dict[str, Any]) -> Any:
        handle = ductape.job.schedule(
            env="dev", product_tag="tests", event="echo", cache="short",
            input={"to": "$Session{user}{email}"},
            session={"tag": "user-session", "token": ductape.sessions.start("user-session", data)},
        )  # fmt: skip
        return finished(ductape, handle.job_id, JobStatus.COMPLETED)

    first, again, other = run(alice), run(alice), run(bob)
    assert first.spec.input == other.spec.input == {"to": "***"}  # alike as stored...
    assert first.result == again.result == {"echo": {"to": alice["user"]["email"]}}
    assert other.result == {"echo": {"to": bob["user"]["email"]}}  # ...but never served each other
    assert [c["input"]["to"] for c in calls(r, "echo")] == [alice["user"]["email"], bob["user"]["email"]]
    assert [run.cached for run in ductape.job.runs(again.job_id)] == [True]
    assert [run.cached for run in ductape.job.runs(other.job_id)] == [False]
    cached = [k for k in r.scan_iter(match=f"{env_prefix}:cache:short:*")]
    assert len(cached) == 2 and all(b"$sealed" in r.get(k) for k in cached)


def test_a_failing_handler_does_not_leak_session_values(
    procs: Processes, ductape: Ductape, settings: Settings, r: redis.Redis, env_prefix: str
) -> None:
    worker = procs.worker(DUCTAPE_TASK_EVENTS="true")
    data = user_data()
    token = ductape.sessions.start("user-session", data)
    with EventTap(settings) as tap:
        handle = ductape.job.schedule(
            env="dev", product_tag="notifications", event="bounce", retries=1, input=dict(SEED_INPUT),
            session={"tag": "user-session", "token": token},
        )  # fmt: skip
        job = finished(ductape, handle.job_id, JobStatus.FAILED)
        tap.wait(job.last_run_id, "task-retried", "task-failed")
    assert [c["input"]["email"] for c in calls(r, "bounce")] == [data["user"]["email"]] * 2
    assert "mailbox *** does not exist" in (job.last_error or "")
    [dead] = ductape.job.failed()
    assert "mailbox *** does not exist" in (dead.traceback or "")
    needles = secrets_of(token, data)
    assert_nothing_stored(r, env_prefix, needles)
    assert tap.leaks(needles) == []
    assert leaks("worker log", procs.log(worker).encode(), needles) == []


# -- the Redis password -----------------------------------------------------------------------


def test_redis_password_is_never_shown_and_an_outage_fails_fast(prefix: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = Settings(redis_url=url, key_prefix=prefix)
    ductape = Ductape(settings=settings)
    try:
        shown = [repr(settings), str(settings), str(dataclasses.asdict(settings)),
                 repr(ductape), str(ductape),
                 repr(ductape.sessions), repr(ductape.vault), repr(ductape.redis)]  # fmt: skip
        assert not [s for s in shown if password in s]
        attempts = [
            lambda: ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={}),
            lambda: ductape.job.get("nope"),
            lambda: ductape.job.list(),
        ]
        for attempt in attempts:
            with pytest.raises(BackendUnavailableError) as err:
                attempt()
            assert "Redis is unreachable" in str(err.value)
            assert password not in error_texts(err.value)
    finally:
        ductape.close()
    from_env = Settings.from_env({"REDIS_URL": url, "DUCTAPE_KEY_PREFIX": prefix})
    assert password not in repr(from_env) and from_env.url == url


def test_redis_password_stays_out_of_worker_and_beat_logs(
    prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    server = EmbeddedRedis.start(appendonly=False)
    procs: Processes | None = None
    try:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", password)
        admin.close()
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        procs = Processes(url, prefix, tmp_path_factory.mktemp("pw-procs"))
        worker, beat = procs.worker(DUCTAPE_TASK_EVENTS="true"), procs.beat()
        settings = Settings(redis_url=url, key_prefix=prefix, handlers=("tests.handlers",))
        with Ductape(settings=settings) as ductape:
            handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"n": 1},
                                          repeat={"every": 1000, "limit": 2})  # fmt: skip
            finished(ductape, handle.job_id, JobStatus.COMPLETED)
        for proc in (worker, beat):
            log = procs.log(proc)
            # the banner names the broker (the worker's through ductape_jobs.transport, kombu#582)...
            assert f"://:**@127.0.0.1:{server.port}" in log
            assert password not in log  # ...without the password
    finally:
        if procs is not None:
            procs.stop_all()
        server.stop()
