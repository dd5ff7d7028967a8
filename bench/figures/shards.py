"""Figure 14: release rate of several beat processes sharing the shards, beside one.

In a deployment of 4 shards (``DUCTAPE_SHARDS=4``), 1, 2 or 4 real beat processes (``ductape-beat``)
start and share the shards (each leads ceil(4 / beats) of them, beat/leader.py); then ``due``
hourly schedules are stored, all due at one instant a few seconds ahead. From that instant the
figure waits until the broker queue holds every run: the release rate is ``due`` over that
time. The same with a deployment of 1 shard and 1 beat says what splitting alone costs. No
worker runs: the runs stay in the queue, as in figure 4.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass

from bench.env import Bench, wait_for
from bench.figures.beat import EVERY_MS
from bench.load import load_ours, template
from bench.report import Row, row
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

SHARDS = 4
# The runs fall due this long after the beats share the shards, time to store them first
LOAD_MARGIN_MS = 5_000
LOADED_PER_MS = 2  # stored schedules per ms allowed for: a loaded machine stored 40,000 in over 13 s
# The beats' lock TTL: balancing (a beat looks at the registry every TTL / 4) is not what is
# timed, so a short one only shortens the wait until they share the shards.
LOCK_TTL_MS = "1500"
COMMAND = ".venv/bin/python -m bench --only 14"


@dataclass(frozen=True)
class Released:
    """One release: its rate, and the CPU it cost per run in the beats and in Redis."""

    runs_per_s: float
    beat_cpu_us: float  # the beat processes' user + system CPU per released run
    redis_cpu_us: float  # the server's (INFO cpu, used_cpu_user + used_cpu_sys) per released run


def release_rate(bench: Bench, shards: int, beats: int, due: int, tag: str) -> Released:
    """How fast ``beats`` real beat processes, started and sharing the shards first, release
    ``due`` runs stored then, all falling due at one instant after they are stored."""
    prefix = bench.prefix(tag)
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False, shards=shards)
    keys = Keys(prefix, shards)
    store = Store(connect(settings), keys)
    env = {
        "DUCTAPE_KEY_PREFIX": prefix,
        "DUCTAPE_HANDLERS": "bench.handlers",
        "DUCTAPE_SHARDS": str(shards),
        "DUCTAPE_BEAT_LOCK_TTL_MS": LOCK_TTL_MS,
    }
    procs = [bench.beat(env, f"{tag}-{n}") for n in range(beats)]
    share = -(-shards // beats)

    def balanced() -> bool:
        for proc in procs:
            bench.check_alive(proc)
        holders = [store.redis.get(k.beat_lock) for k in keys.every_shard()]
        tokens = [h.decode() if isinstance(h, bytes) else h for h in holders]
        pids = [int(t.rsplit(":", 1)[1]) if t else None for t in tokens]
        return None not in pids and all(0 < pids.count(p.pid) <= share for p in procs)

    wait_for(balanced, 120, f"{beats} beat(s) to share {shards} shard(s)", poll_s=0.05)
    at = now_ms() + LOAD_MARGIN_MS + due // LOADED_PER_MS
    load_ours(store, template(settings, EVERY_MS), range(due), lambda n: at)
    stored = sum(int(store.redis.zcard(k.due)) for k in keys.every_shard())
    if stored != due:
        raise RuntimeError(f"{stored} schedules stored, expected {due}")
    if now_ms() >= at - 300:
        raise RuntimeError(f"storing {due} schedules outlasted the margin before they fall due; raise it")
    queue = keys.broker_prefix + settings.queue_for("dev")
    while now_ms() < at - 300:  # the beats decide 250 ms ahead: count their CPU from before that
        time.sleep(0.001)
    beat_cpu, redis_cpu = sum(cpu_s(p.pid) for p in procs), server_cpu_s(store)
    while now_ms() < at:
        time.sleep(0.001)
    start = time.perf_counter()
    wait_for(lambda: int(store.redis.llen(queue)) >= due, 600, f"{due} runs in {queue}", poll_s=0.005)
    elapsed = time.perf_counter() - start
    beat_cpu = sum(cpu_s(p.pid) for p in procs) - beat_cpu
    redis_cpu = server_cpu_s(store) - redis_cpu
    for proc in procs:
        bench.stop(proc)
    store.redis.close()
    bench.drop(prefix)
    return Released(due / elapsed, beat_cpu / due * 1e6, redis_cpu / due * 1e6)


def cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_s(store: Store) -> float:
    """The Redis server's user + system CPU seconds so far (it also counts our LLEN polls)."""
    info = store.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def several_beats(bench: Bench, reps: int, due: int = 20_000) -> list[Row]:
    """Release rate of 1, 2 and 4 beats over 4 shards, beside 1 beat (and 1 beat over 1 shard)."""
    got: dict[tuple[int, int], list[Released]] = defaultdict(list)
    configs = [(1, 1), (SHARDS, 1), (SHARDS, 2), (SHARDS, 4)]
    for rep in range(reps):
        for shards, beats in configs if rep % 2 == 0 else reversed(configs):
            got[(shards, beats)].append(release_rate(bench, shards, beats, due, f"f14s{shards}b{beats}"))
    rates = {config: [r.runs_per_s for r in runs] for config, runs in got.items()}
    cpu = {
        f"{shards} shard(s), {beats} beat(s)": {
            "beat_cpu_us_per_run": [round(r.beat_cpu_us, 1) for r in runs],
            "redis_cpu_us_per_run": [round(r.redis_cpu_us, 1) for r in runs],
        }
        for (shards, beats), runs in got.items()
    }
    one = rates[(SHARDS, 1)]
    rows = [
        row(
            f"14 (info) release rate, 1 beat, {SHARDS} shards vs 1 shard, {due:,} due at once",
            "runs/s",
            one,
            rates[(1, 1)],
            "-",
            None,
            theirs_label="1 beat, 1 shard",
            details={"cpu": cpu},
            command=COMMAND,
        )
    ]
    for beats in (2, 4):
        rows.append(
            row(
                f"14 release rate, {beats} beats sharing {SHARDS} shards, {due:,} due at once",
                "runs/s",
                rates[(SHARDS, beats)],
                one,
                "> 1x (more beats release faster)",
                lambda o, t, r: r > 1,
                theirs_label=f"1 beat, {SHARDS} shards",
                command=COMMAND,
            )
        )
    return rows
