"""Clients behind Sentinel follow a failover without a restart, and DUCTAPE_WAIT_REPLICAS holds
back a write's acknowledgement until a replica has it (real servers and sentinels on loopback)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from kombu import Connection, Queue

from ductape_jobs import AsyncDuctape, BackendUnavailableError, Ductape, NotReplicatedError, Settings
from ductape_jobs.records import Verdict
from ductape_jobs.transport import SentinelTransport
from tests.sentinels import MASTER, SENTINEL_PASSWORD, SentinelGroup

REQUEST = {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}, "start_at": 4_102_444_800}


def sentinel_settings(group: SentinelGroup, prefix: str, **overrides: object) -> Settings:
    """Settings that reach the group through its sentinels, as a deployment's environment would."""
    return Settings.from_env(group.env(), key_prefix=prefix, require_handler=False, **overrides)


def retried(call, timeout_s: float = 60):  # type: ignore[no-untyped-def]
    """``call()`` again while Redis is unreachable (a failover under way), up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except BackendUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_both_clients_follow_a_failover_and_reload_their_scripts(group: SentinelGroup, prefix: str) -> None:
    settings = sentinel_settings(group, prefix)
    ductape = Ductape(settings=settings)
    before = ductape.job.schedule(**REQUEST)
    assert group.client("a").exists(f"{prefix}:job:{before.job_id}")  # it is the primary we reached
    group.wait_replicated("b")

    group.kill("a")
    assert group.wait_promoted("a") == "b"
    sha = ductape.store._scripts["CREATE_JOBS"].sha
    assert group.client("b").script_exists(sha) == [False]  # the new primary has to be taught it

    after = retried(lambda: ductape.job.schedule(**REQUEST))  # the same client, no restart
    assert ductape.job.get(before.job_id).job_id == before.job_id
    assert group.client("b").exists(f"{prefix}:job:{after.job_id}")

    async def asynchronous() -> str:
        async with AsyncDuctape(settings=settings) as aductape:
            handle = await aductape.job.schedule(**REQUEST)
            assert (await aductape.job.get(before.job_id)).job_id == before.job_id
            return handle.job_id

    assert group.client("b").exists(f"{prefix}:job:{asyncio.run(asynchronous())}")
    ductape.close()


def test_an_acknowledged_schedule_is_on_the_replica_when_wait_is_on(
    group: SentinelGroup, prefix: str
) -> None:
    settings = sentinel_settings(group, prefix, wait_replicas=1, wait_timeout_ms=5_000)
    with Ductape(settings=settings) as ductape:
        handles = [ductape.job.schedule(**REQUEST) for _ in range(20)]
        handles += ductape.job.schedule_many([REQUEST] * 20)
        replica = group.client("b")
        # No waiting here: schedule() returned only once the replica had each job.
        assert all(replica.exists(f"{prefix}:job:{h.job_id}") for h in handles)

    async def asynchronous() -> list[str]:
        async with AsyncDuctape(settings=settings) as aductape:
            return [(await aductape.job.schedule(**REQUEST)).job_id for _ in range(5)]

    assert all(replica.exists(f"{prefix}:job:{job_id}") for job_id in asyncio.run(asynchronous()))


def test_a_write_found_done_is_not_acknowledged_before_a_replica_has_it(
    group: SentinelGroup, prefix: str
) -> None:
    # A retried call whose first send landed finds its write done and writes nothing on its new
    # connection: its WAIT must still cover that write. Here the earlier write comes from a
    # client that does not wait, made while the replica is stopped.
    request = {**REQUEST, "idempotency_key": f"{prefix}-once"}
    waiting = sentinel_settings(group, prefix, wait_replicas=1, wait_timeout_ms=300)
    group.pause("b", True)
    try:
        with Ductape(settings=sentinel_settings(group, prefix)) as plain:
            first = plain.job.schedule(**request)
        with Ductape(settings=waiting) as ductape, pytest.raises(NotReplicatedError) as refused:
            ductape.job.schedule(**request)  # the same job, found: nothing written by this call
        assert "CREATE_JOBS reached the primary but only 0 of 1" in str(refused.value)

        async def asynchronous() -> None:
            async with AsyncDuctape(settings=waiting) as aductape:
                await aductape.job.schedule(**request)

        with pytest.raises(NotReplicatedError):
            asyncio.run(asynchronous())
    finally:
        group.pause("b", False)
    group.wait_replicated("b")
    with Ductape(settings=waiting) as ductape:  # the replica has it now: the same job, acknowledged
        assert ductape.job.schedule(**request).job_id == first.job_id


def test_a_write_no_replica_confirmed_fails_clearly_and_stays_on_the_primary(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    # The test server has no replica: WAIT 1 can only time out.
    settings = Settings(redis_url=redis_url, key_prefix=prefix, require_handler=False, wait_replicas=1)
    settings = settings.replace(**{"wait_timeout_ms": 50})
    before = set(r.scan_iter(match=f"{prefix}:job:*"))
    with Ductape(settings=settings) as ductape, pytest.raises(NotReplicatedError) as refused:
        ductape.job.schedule(**REQUEST)
    assert "CREATE_JOBS reached the primary but only 0 of 1 replica(s) within 50 ms" in str(refused.value)
    assert isinstance(refused.value, BackendUnavailableError)
    # Not undone: the primary has it (a retry with an idempotency_key returns the same job).
    assert len(set(r.scan_iter(match=f"{prefix}:job:*")) - before) == 1

    async def asynchronous() -> None:
        async with AsyncDuctape(settings=settings) as aductape:
            await aductape.job.schedule(**REQUEST)

    with pytest.raises(NotReplicatedError):
        asyncio.run(asynchronous())


def test_a_start_asked_again_by_its_own_delivery_renews_its_lease(
    ductape: Ductape, r: redis.Redis, prefix: str
) -> None:
    # A worker whose BEGIN_RUN no replica confirmed asks again, for as long as the failover
    # takes: its run must not be taken as lost meanwhile.
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={})
    run_id = ductape.job.get(handle.job_id).last_run_id
    assert run_id is not None
    first = ductape.store.begin_run(run_id, handle.job_id, 1_000, 10_000, "h:1:a")
    again = ductape.store.begin_run(run_id, handle.job_id, 8_000, 10_000, "h:1:a")
    assert (again.verdict, again.attempt) == (Verdict.RUN, first.attempt)
    assert int(r.hget(f"{prefix}:run:{run_id}", "lease_ms") or 0) == 18_000
    other = ductape.store.begin_run(run_id, handle.job_id, 15_000, 10_000, "h:2:b")
    assert other.verdict == Verdict.BUSY  # held: without the renewal its lease ended at 11,000


@pytest.mark.parametrize("transport", ["sentinel", SentinelTransport], ids=["kombu", "ours"])
def test_the_sentinel_channel_restores_held_messages_after_its_transport_dropped_its_client(
    group: SentinelGroup, prefix: str, transport: object
) -> None:
    # kombu#582 on kombu's sentinel transport too: ours keeps the connection details.
    options = {
        "global_keyprefix": f"{prefix}:",
        "master_name": MASTER,
        "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
    }
    conn = Connection(group.url, transport=transport, transport_options=options)
    conn.Producer().publish({"run": 1}, routing_key="q", declare=[Queue("q", routing_key="q")])
    channel = conn.channel()
    assert channel.basic_get("q", no_ack=False) is not None
    conn.transport.client = None  # what Connection._do_close_transport does
    primary = group.client(group.master())
    if transport == "sentinel":  # if this starts failing, kombu fixed #582 for sentinels too
        with pytest.raises(AttributeError, match=r"alt|hostname"):
            channel.close()
        return
    channel.close()
    assert primary.hlen(f"{prefix}:unacked") == 0 and primary.llen(f"{prefix}:q") == 1  # back on its queue
