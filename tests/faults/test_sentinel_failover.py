"""Redis behind Sentinel: the primary SIGKILLed while jobs are scheduled, released by beat and run
by real workers; with DUCTAPE_WAIT_REPLICAS nothing acknowledged is lost or doubled.

A primary, a replica and three sentinels on loopback (tests/sentinels.py). On loopback a replica
is never more than a moment behind, so the fault first cuts the replica's link for a second (the
primary drops it, the replica is held stopped), as a network blip would, then kills the primary
and lets the replica go: what the primary acknowledged during the blip is on no replica. The
killed server comes back, empty, and the sentinels make it the new primary's replica (with one
replica, WAIT 1 refuses writes until it has). Handlers record their calls on another server
(TEST_RECORD_URL), which the failover does not touch.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ductape_jobs import BackendUnavailableError, Ductape, Settings
from ductape_jobs.connection import connect
from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.terms import job_id_of
from tests.faults.conftest import Report, now_ms
from tests.sentinels import SentinelGroup
from tests.support import Processes, wait_for

pytestmark = pytest.mark.faults

FAST = {
    "DUCTAPE_BEAT_LOCK_TTL_MS": "1500",
    "DUCTAPE_VISIBILITY_TIMEOUT_S": "5",
    "DUCTAPE_RUN_LEASE_S": "10",
    "DUCTAPE_SOCKET_TIMEOUT_S": "2",
}
SCHEDULE_EVERY_S = 0.05  # the producer's pace
BEAT_DELAY_MS = 1_500  # half the jobs start this much later, so beat releases them


@pytest.fixture
def sentinel_down_after_ms() -> int:
    """Sentinels here call the primary down after 2 s (conftest: 1 s), as the table was measured."""
    return 2000


@pytest.fixture
def recorder() -> Iterator[EmbeddedRedis]:
    """Where handlers record what ran: a server the failover does not touch."""
    server = EmbeddedRedis.start(appendonly=False)
    try:
        yield server
    finally:
        server.stop()


class Producer(threading.Thread):
    """Schedules one-offs until stopped: half due now (schedule() hands them over), half a
    moment later (beat releases them). Keeps what was acknowledged, and when."""

    def __init__(self, ductape: Ductape) -> None:
        super().__init__(name="producer", daemon=True)
        self.ductape = ductape
        self.acked: dict[str, tuple[int, bool]] = {}  # job id -> (acknowledged at, released by beat)
        self.refused: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            later = n % 2 == 0
            request: dict[str, Any] = {
                "env": "dev",
                "product_tag": "tests",
                "event": "echo",
                "input": {"n": n},
            }
            if later:
                request["start_at"] = now_ms() + BEAT_DELAY_MS
            try:
                handle = self.ductape.job.schedule(**request)
            except BackendUnavailableError as exc:  # NotReplicatedError too: not acknowledged
                self.refused.append(type(exc).__name__)
            else:
                self.acked[handle.job_id] = (now_ms(), later)
            self.stop.wait(SCHEDULE_EVERY_S)


def executed(recorder: redis.Redis, prefix: str) -> Counter[str]:
    """How many times each run id was executed (recorded by the echo handler)."""
    raw = recorder.hgetall(f"{prefix}:test:calls:echo:runs")
    return Counter({k.decode(): int(v) for k, v in raw.items()})


def first_run_at(recorder: redis.Redis, prefix: str, job_ids: set[str]) -> int | None:
    """When the first of ``job_ids`` was executed (ms), or None."""
    import json

    times = [
        entry["at_ms"]
        for entry in map(json.loads, recorder.lrange(f"{prefix}:test:calls:echo", 0, -1))
        if entry["job_id"] in job_ids
    ]
    return min(times) if times else None


def diagnose(master: redis.Redis, prefix: str, job_id: str, procs: Processes) -> dict[str, Any]:
    """What a job that never ran left behind: its records, its indexes, the lines naming it."""
    job = {k.decode(): v.decode()[:80] for k, v in master.hgetall(f"{prefix}:job:{job_id}").items()}
    run_id = job.get("last_run_id", "")
    run = {k.decode(): v.decode()[:80] for k, v in master.hgetall(f"{prefix}:run:{run_id}").items()}
    queued = [
        k.decode()
        for k in master.scan_iter(match=f"{prefix}:broker:*")
        if job_id.encode() in (master.dump(k) or b"")
    ]
    lines = [line for p in procs.running for line in procs.log(p).splitlines() if job_id in line]
    return {
        "job": job,
        "run": run,
        "due": master.zscore(f"{prefix}:due", f"j:{job_id}"),
        "inflight": master.zscore(f"{prefix}:inflight", run_id),
        "broker_keys": queued,
        "log": lines[-10:],
    }


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait-1", "no-wait"])
def test_failover_loses_nothing_acknowledged_with_wait(
    group: SentinelGroup,
    recorder: EmbeddedRedis,
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
    wait_replicas: int,
) -> None:
    waiting = {"DUCTAPE_WAIT_REPLICAS": str(wait_replicas), "DUCTAPE_WAIT_TIMEOUT_MS": "500"}
    env = {**group.env(), **FAST, **waiting, "TEST_RECORD_URL": recorder.url}
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)
    settings = Settings.from_env({**env, "DUCTAPE_KEY_PREFIX": prefix}, require_handler=False)
    procs = Processes(group.url, prefix, tmp_path_factory.mktemp("procs"), overrides=env)
    records = redis.Redis.from_url(recorder.url)
    try:
        worker = procs.worker(concurrency=2, wait=False)
        beat = procs.beat()
        master = connect(settings)
        wait_for(lambda: master.hlen(f"{prefix}:workers") > 0, 60, "the worker to be ready")
        wait_for(lambda: master.get(f"{prefix}:beat:lock") is not None, 60, "beat to lead")
        ductape = Ductape(settings=settings)
        producer = Producer(ductape)
        producer.start()
        wait_for(lambda: len(executed(records, prefix)) >= 10, 60, "runs before the fault")

        group.cut_replica("a", "b", 1.0)  # the primary acknowledges writes no replica has
        killed_ms = now_ms()
        group.kill("a")
        group.pause("b", False)
        group.wait_promoted("a")
        promoted_s = (now_ms() - killed_ms) / 1000
        group.rejoin("a")  # a supervisor restarts it; the sentinels make it b's replica
        rejoined_s = (now_ms() - killed_ms) / 1000
        wait_for(
            lambda: any(at > killed_ms for at, _ in producer.acked.values()),
            60,
            "a schedule() after the failover",
        )
        time.sleep(3)  # keep scheduling for a while after the failover (a load's length)
        producer.stop.set()
        producer.join(30)

        acked = producer.acked
        stored = {job_id for job_id in acked if master.exists(f"{prefix}:job:{job_id}")}

        def all_ran() -> bool:
            ran = {job_id_of(run) for run in executed(records, prefix)}
            return stored <= ran

        deadline = time.monotonic() + 90
        while not all_ran() and time.monotonic() < deadline:  # what never ran is counted lost below
            time.sleep(0.2)
        time.sleep(2)  # a late duplicate would show now (a settling time, not a condition)
        ran = executed(records, prefix)
        ran_jobs = Counter(job_id_of(run) for run in ran.elements())
        lost_schedules = len(acked.keys() - stored)
        lost_runs = len(stored - ran_jobs.keys())
        duplicated = sum(n - 1 for n in ran_jobs.values() if n > 1)
        after = {job_id for job_id, (at, _) in acked.items() if at > killed_ms}
        by_beat = {job_id for job_id in after if acked[job_id][1]}
        direct_at = first_run_at(records, prefix, after - by_beat)
        beat_at = first_run_at(records, prefix, by_beat)
        recover_s = round((max(direct_at or 0, beat_at or 0) - killed_ms) / 1000, 1)
        alive = worker.poll() is None and beat.poll() is None
        # Every token beat led with, in order (it takes the lead again on the new primary).
        tokens = [int(n) for n in re.findall(r"is leader \(fencing token (\d+)\)", procs.log(beat))]
        unran = [diagnose(master, prefix, job_id, procs) for job_id in sorted(stored - ran_jobs.keys())[:3]]
        report(
            f"Sentinel failover, DUCTAPE_WAIT_REPLICAS={wait_replicas}",
            len(acked) + sum(ran.values()),
            2,  # the replica's link cut, then the primary SIGKILLed
            lost_schedules + lost_runs,
            duplicated,
            acknowledged=len(acked),
            refused=len(producer.refused),
            lost_schedules=lost_schedules,
            lost_runs=lost_runs,
            recover_s=recover_s,
            promoted_s=round(promoted_s, 1),
            tokens=tokens,
            rejoined_s=round(rejoined_s, 1),
        )
        # Beat and the worker carried on, without a restart: jobs acknowledged after the
        # failover ran, those schedule() hands over and those beat releases.
        assert alive, {p.pid: procs.log(p)[-3000:] for p in (worker, beat)}
        assert direct_at is not None and beat_at is not None, (direct_at, beat_at)
        if wait_replicas:
            assert (lost_schedules, lost_runs, duplicated) == (0, 0, 0), unran
            # The fencing token only increases across the failover (docs/design.md §11.30).
            assert len(tokens) >= 2 and tokens == sorted(set(tokens)), tokens
        ductape.close()
        master.close()
    finally:
        procs.stop_all()
        records.close()
