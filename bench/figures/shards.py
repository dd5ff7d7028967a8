"""Figure 12: release rate of several beat processes sharing the shards, beside one.

A deployment of 4 shards (``DUCTAPE_SHARDS=4``) stores ``due`` hourly schedules, all due at one
instant a little ahead; 1, 2 or 4 real ``celery beat`` processes start and share the shards
(each leads ceil(4 / beats) of them, beat/leader.py). From that instant the figure waits until
the broker queue holds every run: the release rate is ``due`` over that time. The same with a
deployment of 1 shard and 1 beat says what splitting alone costs. No worker runs: the runs stay
in the queue, as in figure 4.
"""

from __future__ import annotations

import time
from collections import defaultdict

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
START_AFTER_MS = 25_000  # beats start and share the shards before the runs fall due
COMMAND = ".venv/bin/python -m bench --only 12"


def release_rate(
    bench: Bench, shards: int, beats: int, due: int, tag: str, start_after_ms: int = START_AFTER_MS
) -> float:
    """Runs per second ``beats`` real beat processes release, ``due`` falling due at once
    ``start_after_ms`` from now (time for the beats to start and share the shards)."""
    prefix = bench.prefix(tag)
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False, shards=shards)
    keys = Keys(prefix, shards)
    store = Store(connect(settings), keys)
    at = now_ms() + start_after_ms
    load_ours(store, template(settings, EVERY_MS), range(due), lambda n: at)
    stored = sum(int(store.redis.zcard(k.due)) for k in keys.every_shard())
    if stored != due:
        raise RuntimeError(f"{stored} schedules stored, expected {due}")
    env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers", "DUCTAPE_SHARDS": str(shards)}
    procs = [
        bench.spawn(
            "workers", ["beat", "--loglevel", "WARNING", "-S", "beat.RedisScheduler"], env, f"{tag}-{n}"
        )
        for n in range(beats)
    ]
    share = -(-shards // beats)

    def balanced() -> bool:
        for proc in procs:
            bench.check_alive(proc)
        holders = [store.redis.get(k.beat_lock) for k in keys.every_shard()]
        pids = [int(h.decode().rsplit(":", 1)[1]) if h else None for h in holders]
        return None not in pids and all(0 < pids.count(p.pid) <= share for p in procs)

    wait_for(balanced, start_after_ms / 1000, f"{beats} beat(s) to share {shards} shard(s)", poll_s=0.05)
    if now_ms() >= at:
        raise RuntimeError("the beats shared the shards only after the runs fell due; start them earlier")
    queue = keys.broker_prefix + settings.queue_for("dev")
    while now_ms() < at:
        time.sleep(0.001)
    start = time.perf_counter()
    wait_for(lambda: int(store.redis.llen(queue)) >= due, 600, f"{due} runs in {queue}", poll_s=0.005)
    elapsed = time.perf_counter() - start
    for proc in procs:
        bench.stop(proc)
    store.redis.close()
    bench.drop(prefix)
    return due / elapsed


def several_beats(bench: Bench, reps: int, due: int = 40_000) -> list[Row]:
    """Release rate of 1, 2 and 4 beats over 4 shards, beside 1 beat (and 1 beat over 1 shard)."""
    rates: dict[tuple[int, int], list[float]] = defaultdict(list)
    configs = [(1, 1), (SHARDS, 1), (SHARDS, 2), (SHARDS, 4)]
    for rep in range(reps):
        for shards, beats in configs if rep % 2 == 0 else reversed(configs):
            rates[(shards, beats)].append(release_rate(bench, shards, beats, due, f"f12s{shards}b{beats}"))
    one = rates[(SHARDS, 1)]
    rows = [
        row(
            f"12 (info) release rate, 1 beat, {SHARDS} shards vs 1 shard, {due:,} due at once",
            "runs/s",
            one,
            rates[(1, 1)],
            "-",
            None,
            theirs_label="1 beat, 1 shard",
            command=COMMAND,
        )
    ]
    for beats in (2, 4):
        rows.append(
            row(
                f"12 release rate, {beats} beats sharing {SHARDS} shards, {due:,} due at once",
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
