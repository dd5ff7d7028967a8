"""Batches on a real server: what ``schedule_many`` writes, streamed in CREATE_JOBS calls, matches
what ``schedule`` writes one by one; refusals name their request and write nothing; twins are
found across calls; and the worker's direct script calls survive a flushed script cache and a
lost reply.
"""

from __future__ import annotations

import base64
import gc
import json
import threading
from typing import Any

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, JobValidationError, Settings
from ductape_jobs.keys import Keys
from ductape_jobs.scripts import CREATE_BATCH

LATER_MS = 4_102_444_800_000  # 2100-01-01: past the horizon, so the job waits in the due index


def job(**fields: Any) -> dict[str, Any]:
    """A one-off immediate request, with ``fields`` changed."""
    return {"env": "dev", "product_tag": "tests", "event": "echo", "input": {"n": 0}, **fields}


def stored(r: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(key).items()}


def queued(r: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """The dev queue's messages, oldest first."""
    raw = r.lrange(f"{Keys(settings.key_prefix).broker_prefix}{settings.queue_for('dev')}", 0, -1)
    return [json.loads(m) for m in reversed(raw)]


def same_but_ids(one: dict[str, str], other: dict[str, str], ids: set[str]) -> None:
    """Two records agree on every field but those that carry a job or run id."""
    assert one.keys() == other.keys()
    assert {k: v for k, v in one.items() if k not in ids} == {k: v for k, v in other.items() if k not in ids}


def test_a_batch_writes_what_one_by_one_scheduling_writes(ductape: Ductape, settings: Settings, r) -> None:
    inputs = [{"n": 1}, {"text": 'say "hi" to \u00e9l\u00e8ve \U0001f600', "ok": True, "x": 1.5}, {}]
    keys = Keys(settings.key_prefix)
    lone = [ductape.job.schedule(job(input=given)) for given in inputs]
    batch = ductape.job.schedule_many([job(input=given) for given in inputs])  # one shape: planned once
    messages = queued(r, settings)
    assert len(messages) == 6
    for i, (a, b) in enumerate(zip(lone, batch, strict=True)):
        assert (a.status, a.recurring, b.status, b.recurring) == (
            JobStatus.QUEUED,
            False,
            JobStatus.QUEUED,
            False,
        )
        first, second = stored(r, keys.job(a.job_id)), stored(r, keys.job(b.job_id))
        # the spec's fields (jobfields.py): the input's JSON, as the long way writes it
        assert json.loads(first.get("in", "{}")) == json.loads(second.get("in", "{}")) == inputs[i]
        times = {"created_ms", "updated_ms", "anchor_ms", "cr", "st"}
        same_but_ids(first, second, {"last_run_id", *times})
        run_a, run_b = first["last_run_id"], second["last_run_id"]
        assert run_b == f"{b.job_id}:{second['anchor_ms']}"
        same_but_ids(
            stored(r, keys.run(run_a)), stored(r, keys.run(run_b)), {"job_id", "nominal_ms", "queued_ms"}
        )
        # The message of a batched job is its own: its run id, its input's argsrepr, its own tag.
        env_a, env_b = messages[i], messages[3 + i]
        assert env_b["headers"]["id"] == env_b["headers"]["root_id"] == run_b
        assert env_b["properties"]["correlation_id"] == run_b
        assert env_b["headers"]["argsrepr"] == env_a["headers"]["argsrepr"] == repr(inputs[i])
        assert env_b["headers"]["kwargsrepr"] == repr({"job_id": b.job_id})  # Flower names the job
        assert json.loads(base64.b64decode(env_b["body"]))[0] == [run_b]
        assert env_a["properties"]["delivery_tag"] != env_b["properties"]["delivery_tag"]
        for part in ("headers", "properties"):
            varying = {"id", "root_id", "correlation_id", "delivery_tag", "kwargsrepr"}
            assert {k: v for k, v in env_a[part].items() if k not in varying} == {
                k: v for k, v in env_b[part].items() if k not in varying
            }


def test_a_batch_spanning_several_calls_lands_whole_and_in_order(
    ductape: Ductape, settings: Settings, r
) -> None:
    n = CREATE_BATCH * 2 + 7
    handles = ductape.job.schedule_many([job(input={"n": i}) for i in range(n)])
    assert len({h.job_id for h in handles}) == n
    keys = Keys(settings.key_prefix)
    assert r.zcard(keys.jobs) == n and r.zcard(keys.inflight) == n
    assert [m["headers"]["argsrepr"] for m in queued(r, settings)] == [repr({"n": i}) for i in range(n)]
    later = ductape.job.schedule_many([job(input={"n": i}, start_at=LATER_MS) for i in range(3)])
    assert [h.status for h in later] == [JobStatus.SCHEDULED] * 3
    assert r.zscore(keys.due, f"j:{later[2].job_id}") == LATER_MS


BAD_LATE = {
    "input with a non-string key": {1: "x"},
    "input that is not a dict": [1, 2],
    "input too deep": {"a": {"b": {"c": {"d": 1}}}},
    "placeholder without a session": {"to": "$Session{user}{email}"},
}


@pytest.mark.parametrize("case", list(BAD_LATE))
def test_a_bad_input_deep_in_a_batch_is_named_and_nothing_is_written(
    case: str, settings: Settings, r: redis.Redis
) -> None:
    at = CREATE_BATCH + 200  # past the first call's worth: the check is whole before any write
    requests = [job(input={"n": i}) for i in range(CREATE_BATCH + 500)]
    requests[at] = job(input=BAD_LATE[case])
    with Ductape(settings=settings.replace(**{"max_input_depth": 3})) as ductape:
        with pytest.raises(JobValidationError) as refused:
            ductape.job.schedule_many(requests)
        with pytest.raises(JobValidationError) as alone:
            ductape.job.schedule(requests[at])
    # The same error a lone request gets, named by its place in the batch.
    assert refused.value.field == f"requests[{at}].{alone.value.field}"
    assert str(refused.value).split(": ", 1)[1] == str(alone.value).split(": ", 1)[1]
    assert r.keys(f"{settings.key_prefix}:*") == []


def test_fields_that_only_compare_equal_are_not_taken_for_the_same_request(ductape: Ductape, r) -> None:
    # 1 == True and hash alike: a batch must still check retries=True on its own and refuse it.
    with pytest.raises(JobValidationError) as refused:
        ductape.job.schedule_many([job(retries=1), job(retries=1), job(retries=True)])
    assert refused.value.field == "requests[2].retries"
    with pytest.raises(JobValidationError) as refused:
        ductape.job.schedule_many([job(start_at=0), job(start_at=0.0), job(start_at=False)])
    assert refused.value.field == "requests[2].start_at"
    assert r.keys(f"{ductape.settings.key_prefix}:*") == []
    handles = ductape.job.schedule_many([job(start_at=0), job(start_at=0.0)])
    assert [h.status for h in handles] == [JobStatus.QUEUED] * 2


def test_twins_are_found_within_a_call_and_across_calls(ductape: Ductape, settings: Settings, r) -> None:
    every = job(input={"kind": "every"}, repeat={"every": 60_000})
    requests = [job(input={"n": i}) for i in range(CREATE_BATCH + 100)]
    for at in (3, 4, CREATE_BATCH + 50):
        requests[at] = every
    handles = ductape.job.schedule_many(requests)
    first = handles[3]
    assert first.created and first.recurring
    for at in (4, CREATE_BATCH + 50):
        assert handles[at].job_id == first.job_id and not handles[at].created
    assert handles[5].created and handles[CREATE_BATCH + 51].created
    keys = Keys(settings.key_prefix)
    assert r.zcard(keys.jobs) == len(requests) - 2
    assert len(r.keys(f"{settings.key_prefix}:fp:*")) == 1
    again = ductape.job.schedule(every)  # a later call finds the live twin too
    assert again.job_id == first.job_id and not again.created


def test_writes_survive_a_flushed_script_cache(ductape: Ductape, settings: Settings, r) -> None:
    ductape.job.schedule(job())
    r.script_flush()  # as after a server restart: every cached script is gone
    handles = ductape.job.schedule_many([job(input={"n": i}) for i in range(CREATE_BATCH + 1)])
    assert r.zcard(Keys(settings.key_prefix).jobs) == CREATE_BATCH + 2
    run_id = f"{handles[0].job_id}:{int(handles[0].scheduled_at.timestamp() * 1000)}"
    r.script_flush()
    started = ductape.store.begin_run(run_id, handles[0].job_id, 1, 60_000, "test:0:1")
    assert started.verdict == "run" and started.attempt == 1


def _started(ductape: Ductape, handle: Any) -> tuple[str, int]:
    run_id = f"{handle.job_id}:{int(handle.scheduled_at.timestamp() * 1000)}"
    started = ductape.store.begin_run(run_id, handle.job_id, 1, 60_000, "test:0:2")
    assert started.verdict == "run"
    return run_id, started.attempt


def test_a_deferred_finish_is_read_later_and_sent_again_when_its_reply_is_lost(
    ductape: Ductape, settings: Settings, r
) -> None:
    store, keys = ductape.store, Keys(settings.key_prefix)
    one, two, three = ductape.job.schedule_many([job(input={"n": i}) for i in range(3)])
    run_one, attempt = _started(ductape, one)
    # The first finish on a connection waits (its server may not hold the script yet) ...
    assert store.finish_run(run_one, one.job_id, attempt, 2, "completed", wait=False) is True
    assert r.hget(keys.run(run_one), "status") == b"completed"
    run_two, attempt_two = _started(ductape, two)
    assert r.hget(keys.job(one.job_id), "status") == b"completed"

    # ... later ones don't. A send that vanished with its connection: it never reached Redis.
    conn = store._held().conn
    conn.send_packed_command = lambda *_, **__: None
    store.finish_run(run_two, two.job_id, attempt_two, 3, "completed", wait=False)
    del conn.send_packed_command
    conn.disconnect()
    assert r.hget(keys.run(run_two), "status") == b"running"
    _started(ductape, three)  # its reply can't be read, so the finish is sent again first
    assert r.hget(keys.run(run_two), "status") == b"completed"
    assert r.zscore(keys.inflight, run_two) is None
    with pytest.raises(ValueError, match="completed"):
        store.finish_run(run_two, two.job_id, attempt_two, 4, "failed", wait=False)


def test_a_thread_s_own_connection_is_closed_when_the_thread_ends(ductape: Ductape, r) -> None:
    name = f"held-{ductape.settings.key_prefix}"
    ductape.redis.connection_pool.connection_kwargs["client_name"] = name

    def named() -> int:
        return sum(1 for client in r.client_list() if client.get("name") == name)

    def work() -> None:
        assert ductape.store.begin_run("nojob:1", "nojob", 1, 60_000, "test:0:3").verdict != "run"

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert named() == 0  # twelve threads came and went: none left a connection open
    work()
    assert named() == 1  # this thread's own, kept for its next call
