"""Keys and updates (issue 14 items 2 and 3) over real Redis: ``schedule(key=)`` and ``update()``
change a job in place, racing beat's claim; ``idempotency_key`` returns one one-off across
clients, within a batch and after a call that timed out while its write landed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest
import redis
from celery import Celery

from beat.engine import BeatEngine
from ductape_jobs import AsyncDuctape, Ductape, ops
from ductape_jobs.errors import BackendUnavailableError, JobStateError, JobValidationError
from ductape_jobs.ops import Batch
from ductape_jobs.settings import Settings
from ductape_jobs.store import DueEntry, Store
from ductape_jobs.terms import JobStatus
from tests.integration.test_beat_engine import RacingStore, engine_for
from tests.support import wait_for

MIN = 60_000
HOUR = 3_600_000
JOB = {"env": "dev", "product_tag": "tests", "event": "echo"}
# No worker runs what beat releases here: every slot is released although the one before is
# unfinished (repeat.overlap's default, skip, would skip it).
ALLOW = {"overlap": "allow"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def racing(ductape: Ductape) -> RacingStore:
    """Beat's store on its own connection, with a hook between its read and its claim."""
    return RacingStore(redis.Redis(connection_pool=ductape.redis.connection_pool), ductape.store.keys)


@pytest.fixture
def celery_app(ductape: Ductape) -> Celery:
    return ductape.celery


def due(store: Store) -> dict[str, int]:
    return {m.decode(): int(s) for m, s in store.redis.zrange(store.keys.due, 0, -1, withscores=True)}


def released(ductape: Ductape, job_id: str) -> list[int]:
    """The slots released for the job, oldest first (its run records)."""
    return sorted(run.nominal_ms for run in ductape.job.runs(job_id, 1_000) if not run.manual)


def finish(flow: Any, store: Store, replies: list[Any]) -> Any:
    """Drive a flow on from a point where it was left, sending its batches as the store would."""
    try:
        batch = flow.send(replies)
        while True:
            assert isinstance(batch, Batch)
            batch = flow.send(store._send(batch))
    except StopIteration as done:
        return done.value


# -- update in place racing beat's claim ----------------------------------------------------------


def test_an_update_between_beats_read_and_its_claim_fails_the_claim_and_the_new_rule_runs(
    ductape: Ductape, racing: RacingStore, settings: Settings, celery_app: Celery
):
    start = now_ms() + HOUR
    job = ductape.job.schedule(**JOB, key="report", start_at=start, repeat={**ALLOW, "every": MIN})
    engine, queues = engine_for(racing, settings, celery_app)

    def meanwhile(entries: list[DueEntry]) -> None:
        assert [e.job_id for e in entries] == [job.job_id]
        # The same first slot under the new rule, so only the version tells the claim apart: a
        # claim from the old read would advance the schedule by the old interval.
        ductape.job.update(job.job_id, repeat={**ALLOW, "every": 2 * MIN})

    racing.after_read = meanwhile
    assert engine.tick(start).released == 0  # decided from the old rule: refused
    assert queues.messages() == [] and due(racing) == {f"j:{job.job_id}": start}
    assert engine.tick(start).released == 1  # read again, the new rule
    for at in (start + MIN, start + 2 * MIN, start + 3 * MIN, start + 4 * MIN):
        engine.tick(at)
    assert queues.nominal(job.job_id) == [start, start + 2 * MIN, start + 4 * MIN]
    record = ductape.job.get(job.job_id)
    assert (record.runs_done, record.next_run_ms, record.version) == (3, start + 6 * MIN, 1)


def test_a_claim_between_an_updates_read_and_its_write_is_kept_and_its_slot_not_released_again(
    ductape: Ductape, racing: RacingStore, settings: Settings, celery_app: Celery
):
    start = now_ms() + HOUR
    job = ductape.job.schedule(**JOB, key="sync", start_at=start, repeat={**ALLOW, "every": MIN})
    engine, queues = engine_for(racing, settings, celery_app)
    # The update reads the job, then beat releases its first slot, then the update writes.
    flow = ductape.flows.update(job.job_id, {"repeat": {**ALLOW, "cron": "*/1 * * * *"}})
    read = next(flow)
    replies = racing._send(read)
    assert engine.tick(start).released == 1
    record = finish(flow, racing, replies)  # refused once (runs_done moved), read and planned again
    assert record.version == 1 and record.runs_done == 1
    # The cron's next minute after the released slot: that slot is never released twice.
    first_cron = (start // MIN + 1) * MIN
    assert record.next_run_ms == first_cron and first_cron > start
    engine.tick(first_cron)
    assert queues.nominal(job.job_id) == [start, first_cron]
    assert released(ductape, job.job_id) == [start, first_cron]


def two_runs(
    ductape: Ductape, racing: RacingStore, settings: Settings, app: Celery, key: str
) -> tuple[str, int, BeatEngine]:
    """A keyed schedule every minute (from an hour ahead) after beat released its first two runs;
    the beat (leading)."""
    start = now_ms() + HOUR
    job = ductape.job.schedule(**JOB, key=key, start_at=start, repeat={**ALLOW, "every": MIN})
    engine, _ = engine_for(racing, settings, app)
    engine.tick(start)
    engine.tick(start + MIN)
    assert released(ductape, job.job_id) == [start, start + MIN]
    return job.job_id, start, engine


def test_schedule_with_the_same_key_updates_the_job_keeping_its_id_and_runs(
    ductape: Ductape, racing: RacingStore, settings: Settings, celery_app: Celery
):
    job_id, start, engine = two_runs(ductape, racing, settings, celery_app, "tenant:42/digest")
    again = ductape.job.schedule(
        **JOB,
        key="tenant:42/digest",
        start_at=start,
        repeat={**ALLOW, "every": 5 * MIN},
        retries=3,
        input={"v": 2},
    )
    assert (again.job_id, again.created, again.updated) == (job_id, False, True)
    record = ductape.job.get(job_id)
    assert (record.spec.retries, record.spec.input, record.runs_done) == (3, {"v": 2}, 2)
    # Its phase goes on from the last released slot, by the new interval.
    assert record.next_run_ms == start + 6 * MIN
    engine.tick(start + 6 * MIN)
    assert released(ductape, job_id) == [start, start + MIN, start + 6 * MIN]
    assert len(ductape.job.list()) == 1


def test_the_same_keyed_request_again_changes_nothing(ductape: Ductape):
    request = {**JOB, "key": "deploy", "start_at": now_ms() + HOUR, "repeat": {"cron": "0 9 * * *"}}
    first = ductape.job.schedule(**request)
    again = ductape.job.schedule(**request)  # a deploy script run twice
    assert (again.job_id, again.created, again.updated) == (first.job_id, False, False)
    assert ductape.job.get(first.job_id).version == 0
    assert ductape.job.update(first.job_id, retries=0).version == 0


def test_a_twin_asking_other_retries_or_start_at_updates_it_never_a_silent_no_op(ductape: Ductape):
    start = now_ms() + HOUR
    first = ductape.job.schedule(**JOB, start_at=start, repeat={"every": MIN}, input={"a": 1})
    same = ductape.job.schedule(**JOB, start_at=start, repeat={"every": MIN}, input={"a": 1})
    assert (same.job_id, same.created, same.updated) == (first.job_id, False, False)
    more = ductape.job.schedule(**JOB, start_at=start, repeat={"every": MIN}, input={"a": 1}, retries=4)
    assert (more.job_id, more.created, more.updated) == (first.job_id, False, True)
    assert ductape.job.get(first.job_id).spec.retries == 4
    later = ductape.job.schedule(
        **JOB, start_at=start + HOUR, repeat={"every": MIN}, input={"a": 1}, retries=4
    )
    assert later.updated and ductape.job.get(first.job_id).next_run_ms == start + HOUR


def test_a_new_input_moves_a_schedules_fingerprint_with_it(ductape: Ductape, r: redis.Redis):
    start = now_ms() + HOUR
    old = {**JOB, "start_at": start, "repeat": {"every": MIN}, "input": {"team": "a"}}
    job = ductape.job.schedule(**old)
    ductape.job.update(job.job_id, input={"team": "b"})
    assert len(r.keys(f"{ductape.settings.key_prefix}:fp:*")) == 1
    same = ductape.job.schedule(**{**old, "input": {"team": "b"}})
    assert (same.job_id, same.created) == (job.job_id, False)
    other = ductape.job.schedule(**old)  # the old input is another schedule now
    assert other.created and other.job_id != job.job_id


def test_update_keeps_what_it_is_not_given_and_refuses_what_cannot_change(ductape: Ductape):
    start = now_ms() + HOUR
    job = ductape.job.schedule(**JOB, start_at=start, repeat={"cron": "0 9 * * *", "tz": "Europe/Paris"})
    record = ductape.job.update(job.job_id, retries=2, input={"x": 1})
    assert record.spec.rule == ductape.job.get(job.job_id).spec.rule
    assert (record.spec.retries, record.spec.input) == (2, {"x": 1})
    assert record.next_run_at == job.next_run_at  # the rule unchanged: the schedule stays
    for field, value in (("event", "other"), ("env", "prd"), ("product_tag", "x")):
        with pytest.raises(JobValidationError, match=f"^{field}: cannot be changed"):
            ductape.job.update(job.job_id, **{field: value})
    with pytest.raises(JobValidationError, match=r"^repeat: .* repeats; an update cannot change that"):
        ductape.job.update(job.job_id, repeat={})
    with pytest.raises(JobValidationError, match=r"^repeat\.every"):
        ductape.job.update(job.job_id, repeat={"every": 1})  # below DUCTAPE_MIN_EVERY_MS
    assert ductape.job.get(job.job_id).version == 1  # nothing written by the refusals


def test_an_update_reaching_the_limit_completes_the_schedule_and_frees_its_key(
    ductape: Ductape, racing: RacingStore, settings: Settings, celery_app: Celery
):
    job_id, start, _ = two_runs(ductape, racing, settings, celery_app, "limited")
    record = ductape.job.update(job_id, repeat={**ALLOW, "every": MIN, "limit": 2})
    assert (record.status, record.next_run_ms) == (JobStatus.COMPLETED, None)
    assert due(racing) == {} and not racing.redis.exists(racing.keys.key_index("limited"))
    with pytest.raises(JobStateError, match="it is completed"):
        ductape.job.update(job_id, retries=1)
    fresh = ductape.job.schedule(**JOB, key="limited", start_at=start, repeat={**ALLOW, "every": MIN})
    assert fresh.created and fresh.job_id != job_id


def test_a_cancelled_keyed_job_frees_its_key_and_a_one_off_handed_over_is_not_updated(
    ductape: Ductape, r: redis.Redis
):
    job = ductape.job.schedule(**JOB, key="once", start_at=now_ms() + HOUR)
    ductape.job.cancel(job.job_id)
    assert not r.exists(ductape.store.keys.key_index("once"))
    sent = ductape.job.schedule(**JOB, key="once")  # due now: handed to Celery at once
    assert sent.created and sent.status == JobStatus.QUEUED
    with pytest.raises(JobStateError, match="already handed to a worker"):
        ductape.job.schedule(**JOB, key="once", retries=2)


def test_a_paused_job_updated_stays_paused_with_its_new_rule(ductape: Ductape):
    start = now_ms() + HOUR
    job = ductape.job.schedule(**JOB, start_at=start, repeat={"every": MIN})
    ductape.job.pause(job.job_id)
    record = ductape.job.update(job.job_id, repeat={"every": 2 * MIN}, start_at=start + HOUR)
    assert (record.status, record.next_run_ms) == (JobStatus.PAUSED, start + HOUR)
    assert due(ductape.store) == {}
    assert ductape.job.resume(job.job_id).next_run_ms == start + HOUR


def test_a_session_job_updated_without_its_input_keeps_it_sealed_and_with_it_seals_the_new_one(
    ductape: Ductape, r: redis.Redis
):
    token = ductape.sessions.start("user-session", {"apiKey": "sk-live-zz11"})
    job = ductape.job.schedule(
        **JOB,
        key="with-secret",
        start_at=now_ms() + HOUR,
        repeat={"every": MIN},
        input={"key": "$Session{apiKey}"},
        session={"tag": "user-session", "token": token},
    )
    sealed = ductape.job.get(job.job_id).spec.sealed
    assert ductape.job.update(job.job_id, retries=3).spec.sealed == sealed
    token2 = ductape.sessions.start("user-session", {"apiKey": "sk-live-yy22"})
    ductape.job.schedule(
        **JOB,
        key="with-secret",
        start_at=now_ms() + HOUR,
        repeat={"every": MIN},
        input={"key": "$Session{apiKey}"},
        session={"tag": "user-session", "token": token2},
    )
    spec = ductape.job.get(job.job_id).spec
    assert spec.input == {"key": "***"} and spec.sealed != sealed
    dump = b"".join(r.dump(k) or b"" for k in r.keys(f"{ductape.settings.key_prefix}:*"))
    for secret in (b"sk-live-zz11", b"sk-live-yy22", token.encode(), token2.encode()):
        assert secret not in dump


def test_keys_are_bounded_and_checked_up_front(ductape: Ductape, r: redis.Redis):
    for bad in ("", "has space", "x" * 201, "-lead", "ключ"):
        with pytest.raises(JobValidationError, match=r"^key: .* is not a valid key"):
            ductape.job.schedule(**JOB, key=bad)
    with pytest.raises(JobValidationError, match=r"^idempotency_key: is for one-off jobs"):
        ductape.job.schedule(**JOB, idempotency_key="a", repeat={"every": MIN})
    with pytest.raises(JobValidationError, match=r"^idempotency_key: give key or idempotency_key"):
        ductape.job.schedule(**JOB, idempotency_key="a", key="b")
    assert r.keys(f"{ductape.settings.key_prefix}:*") == []


# -- idempotency keys ----------------------------------------------------------------------------


def test_the_same_idempotency_key_from_two_clients_racing_gives_one_job(settings: Settings):
    clients = [Ductape(settings=settings), Ductape(settings=settings)]
    try:
        for round_ in range(20):
            gate = threading.Barrier(2)
            got: list[Any] = [None, None]

            def race(i: int, key: str, gate: threading.Barrier, got: list[Any]) -> None:
                gate.wait()
                got[i] = clients[i].job.schedule(**JOB, idempotency_key=key, input={"by": i})

            threads = [threading.Thread(target=race, args=(i, f"pay-{round_}", gate, got)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert got[0].job_id == got[1].job_id
            assert sorted([got[0].created, got[1].created]) == [False, True]
        assert len(clients[0].job.list(limit=1_000)) == 20
    finally:
        for c in clients:
            c.close()


def test_schedule_many_honours_idempotency_keys_per_request_and_within_the_batch(ductape: Ductape):
    before = ductape.job.schedule(**JOB, idempotency_key="order-1")
    handles = ductape.job.schedule_many(
        [
            {**JOB, "idempotency_key": "order-1"},
            {**JOB, "idempotency_key": "order-2", "input": {"n": 1}},
            {**JOB, "idempotency_key": "order-2", "input": {"n": 2}},
            {**JOB, "input": {"n": 3}},
            {**JOB, "input": {"n": 3}},  # no key: a one-off is never deduplicated
        ]
    )
    assert handles[0].job_id == before.job_id and not handles[0].created
    assert handles[1].job_id == handles[2].job_id and [h.created for h in handles[1:3]] == [True, False]
    assert handles[3].job_id != handles[4].job_id
    assert len(ductape.job.list()) == 4


def test_an_idempotency_key_expires_with_its_window_and_never_returns_a_job_that_left(
    settings: Settings, r: redis.Redis
):
    with Ductape(settings=settings.replace(**{"idempotency_window_s": 1})) as ductape:
        first = ductape.job.schedule(**JOB, idempotency_key="short", start_at=now_ms() + HOUR)
        idem = ductape.store.keys.idempotency("short")
        assert 0 < r.pttl(idem) <= 1_000
        wait_for(lambda: not r.exists(idem), 10, "the idempotency key to expire")
        second = ductape.job.schedule(**JOB, idempotency_key="short", start_at=now_ms() + HOUR)
        assert second.created and second.job_id != first.job_id
    with Ductape(settings=settings) as ductape:
        third = ductape.job.schedule(**JOB, idempotency_key="gone", start_at=now_ms() + HOUR)
        r.delete(ductape.store.keys.job(third.job_id))  # the job left (evicted) before its key
        fourth = ductape.job.schedule(**JOB, idempotency_key="gone", start_at=now_ms() + HOUR)
        assert fourth.created and fourth.job_id != third.job_id


def test_an_idempotency_key_goes_with_its_job_when_the_sweep_removes_it(ductape: Ductape, r: redis.Redis):
    job = ductape.job.schedule(**JOB, idempotency_key="swept", start_at=now_ms() + HOUR)
    ductape.job.cancel(job.job_id)
    idem = ductape.store.keys.idempotency("swept")
    assert r.get(idem) == job.job_id.encode()  # a retry still gets the cancelled job
    assert ductape.job.schedule(**JOB, idempotency_key="swept").job_id == job.job_id
    ductape.store.run(
        ops.beat.sweep(
            ductape.store.keys,
            ductape.store.retention,
            now_ms() + ductape.settings.job_retention_s * 1000 + 1,
            100,
            0,
        )
    )
    assert not r.exists(ductape.store.keys.job(job.job_id)) and not r.exists(idem)


class ReplyEater:
    """A TCP proxy to Redis that passes every command on and, once ``eat`` is set, swallows the
    replies: a call whose write lands while its caller times out (a network that hangs on the way
    back), whatever the server does with a client that gave up."""

    def __init__(self, redis_url: str) -> None:
        target = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
        self.target = (target["host"], target["port"])
        self.eat = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (replies and self.eat.is_set()):
                    dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_a_call_that_timed_out_while_its_write_landed_is_answered_with_that_job_when_retried(
    settings: Settings, r: redis.Redis
):
    proxy = ReplyEater(settings.url)
    hasty = Ductape(
        settings=settings.replace(
            **{"redis_url": f"redis://127.0.0.1:{proxy.port}/0", "socket_timeout_s": 0.3}
        )
    )
    patient = Ductape(settings=settings)
    try:
        hasty.job.schedule(**JOB, idempotency_key="warm-up")  # connected, scripts loaded
        proxy.eat.set()
        with pytest.raises(BackendUnavailableError):
            hasty.job.schedule(**JOB, idempotency_key="hung-1", input={"amount": 5})
        landed = r.get(patient.store.keys.idempotency("hung-1"))
        assert landed is not None  # the write landed although the caller saw a timeout
        again = patient.job.schedule(**JOB, idempotency_key="hung-1", input={"amount": 5})
        assert (again.job_id, again.created) == (landed.decode(), False)
        assert len(patient.job.list()) == 2  # the warm-up's and this one, once
        queue = patient.store.keys.broker_prefix + settings.queue_for("dev")
        assert r.llen(queue) == 2  # each one-off's run handed to Celery once
    finally:
        hasty.close()
        patient.close()
        proxy.close()


# -- the asyncio client ----------------------------------------------------------------------------


def test_the_async_client_updates_and_honours_idempotency_keys(settings: Settings):
    async def body() -> None:
        async with AsyncDuctape(settings=settings) as ductape:
            start = now_ms() + HOUR
            job = await ductape.job.schedule(**JOB, key="async", start_at=start, repeat={"every": MIN})
            record = await ductape.job.update(job.job_id, repeat={"every": 3 * MIN}, retries=1)
            assert (record.job_id, record.spec.retries, record.version) == (job.job_id, 1, 1)
            again = await ductape.job.schedule(**JOB, key="async", start_at=start, repeat={"every": MIN})
            assert again.job_id == job.job_id and again.updated
            one = await ductape.job.schedule(**JOB, idempotency_key="a-1")
            two = await ductape.job.schedule(**JOB, idempotency_key="a-1")
            assert one.job_id == two.job_id and not two.created

    asyncio.run(body())
