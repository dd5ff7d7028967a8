"""Fixtures and counting helpers shared by the fault-injection scenarios."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.keys import Keys
from tests.handlers import calls_key
from tests.support import Processes

OUTPUT = Path(__file__).resolve().parent.parent / "output" / "faults.jsonl"

Report = Callable[..., dict[str, Any]]


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    """The test's prefix, also where tests.handlers records (it reads DUCTAPE_KEY_PREFIX)."""
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)
    return prefix


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Print one summary line for the scenario and append it to tests/output/faults.jsonl."""
    started = time.monotonic()

    def write(scenario: str, operations: int, faults: int, lost: int, duplicated: int, **detail: Any) -> dict:
        row = {
            "test": request.node.name,
            "scenario": scenario,
            "operations": operations,
            "faults_injected": faults,
            "lost": lost,
            "duplicated": duplicated,
            "wall_s": round(time.monotonic() - started, 1),
            **detail,
        }
        print(
            f"FAULTS {scenario}: operations={operations} faults={faults} lost={lost} "
            f"duplicated={duplicated} wall={row['wall_s']}s {json.dumps(detail, sort_keys=True)}"
        )
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        with OUTPUT.open("a") as out:
            out.write(json.dumps(row, sort_keys=True) + "\n")
        return row

    return write


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own (AOF on), so it can be killed without harming other tests."""
    server = EmbeddedRedis.start(appendonly=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_procs(
    private_redis: EmbeddedRedis, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    """Worker / beat processes on the private Redis."""
    group = Processes(private_redis.url, prefix, tmp_path_factory.mktemp("procs"))
    yield group
    group.stop_all()


def executions(r: redis.Redis, name: str, prefix: str | None = None) -> Counter[str]:
    """How many times handler ``name`` recorded each run id."""
    key = calls_key(name) if prefix is None else f"{prefix}:test:calls:{name}"
    return Counter({k.decode(): int(v) for k, v in r.hgetall(key + ":runs").items()})


def calls(r: redis.Redis, name: str, prefix: str | None = None) -> list[dict[str, Any]]:
    """Every record handler ``name`` left, in order."""
    key = calls_key(name) if prefix is None else f"{prefix}:test:calls:{name}"
    return [json.loads(x) for x in r.lrange(key, 0, -1)]


def now_ms() -> int:
    """Wall clock in epoch ms."""
    return time.time_ns() // 1_000_000


def nominal(run_id: str) -> int:
    """The nominal time in a run id ``{job_id}:{nominal_ms}``."""
    return int(run_id.rsplit(":", 1)[1].rstrip("m"))


def lock_holder(r: redis.Redis, prefix: str, shard: int = 0, shards: int = 1) -> int | None:
    """The pid of the beat holding a shard's leader lock (instance names end in the pid)."""
    token = r.get(Keys(prefix, shards, shard).beat_lock)
    return int(token.decode().rsplit(":", 1)[1]) if token else None


def lock_holders(r: redis.Redis, prefix: str, shards: int) -> list[int | None]:
    """The pid of the beat holding each shard's leader lock."""
    return [lock_holder(r, prefix, shard, shards) for shard in range(shards)]
