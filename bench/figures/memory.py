"""Figure 5: real beat processes releasing a burst of due schedules, ours beside RedBeat.

For each burst size (1,000 and 10,000; 100,000 without ``--quick``), each side stores that many
hourly schedules, all due a second ago, on the same server: ours through the CREATE_JOBS script
(what ``schedule()`` writes), RedBeat's as ``entry.save()`` writes them. The stored count is
asserted (ours: the due and jobs indexes, the job hashes and fingerprint keys; RedBeat: its
schedule ZSET and entry hashes), and the bytes per stored schedule are ``MEMORY USAGE`` (every
element sampled) of every key the side wrote, divided by the count: each record key whole, and
each index ZSET whole, so its members (and the ZSET's own overhead, shared by all) are in it.
The keyspace's own table (a few bytes a key, not in any key's ``MEMORY USAGE``) is left out on
both sides; ours has two keys a schedule, RedBeat one. Then a real ``celery beat`` process starts:
ours ``celery -A workers beat -S beat.RedisScheduler``, RedBeat ``celery -A bench.plain_app beat
-S redbeat.RedBeatScheduler``. The figure reads the beat's peak resident memory (VmHWM) once its
broker queue holds the whole burst, and the seconds from the moment it holds its lock to then.
The sides alternate who goes first; every key is dropped between runs.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.counter import counter_key
from bench.env import Bench, wait_for
from bench.figures.beat import EVERY_MS
from bench.figures.producer import REQUEST
from bench.load import load_ours, load_redbeat, template
from bench.plain_app import QUEUE, TASK, make_app, queue_key, redbeat_prefix
from bench.report import Row, row
from ductape_jobs import Ductape
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

BIG_BURST_REPS = 1  # RedBeat releases about 1,000 a second: 100,000 due take it minutes a run


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident memory) of a process, MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def _bytes_under(bench: Bench, prefix: str, kind: Callable[[str], str]) -> dict[str, list[int]]:
    """Redis's MEMORY USAGE of every key under ``prefix`` (all elements sampled), as [keys, bytes]
    per kind of key: what one side stored, whatever else the server holds or frees meanwhile (a
    used_memory delta went negative on a shared server)."""
    client = bench.client()
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1_000)]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            sizes = pipe.execute()
    finally:
        client.close()
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, size in zip(keys, sizes, strict=True):
        kinds[kind(key)][0] += 1
        kinds[kind(key)][1] += int(size or 0)
    return dict(kinds)


def _used_memory(bench: Bench) -> int | None:
    """Redis used_memory, only on the bench's private server (None on a REDIS_URL one, where
    other tenants move it)."""
    if bench.embedded is None:
        return None
    client = bench.client()
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _used_since(bench: Bench, before: int | None, stored: int) -> dict[str, float]:
    """used_memory per stored schedule since ``before``: it counts the keyspace's own table too
    (private server only; {} otherwise)."""
    after = _used_memory(bench)
    return {} if before is None or after is None else {"bytes_used_memory": (after - before) / stored}


def _per_schedule(kinds: dict[str, list[int]], expected: dict[str, int], stored: int, side: str) -> float:
    """Bytes per stored schedule; fails unless each kind of key holds as many keys as expected."""
    counted = {kind: kinds.get(kind, [0, 0])[0] for kind in expected}
    if counted != expected:
        raise RuntimeError(f"{side}: keys by kind {counted}, expected {expected} ({stored} schedules)")
    return sum(size for _, size in kinds.values()) / stored


def _release(bench: Bench, proc: Any, lock_key: str, queue: str, burst: int) -> dict[str, float]:
    """Wait for the beat to lead, then for its queue to hold the burst; time and peak RSS."""
    db = bench.client()

    def leading() -> bool:
        bench.check_alive(proc)
        return bool(db.exists(lock_key))

    wait_for(leading, 60, f"beat to hold {lock_key}", poll_s=0.01)
    start = time.perf_counter()

    def released() -> bool:
        bench.check_alive(proc)
        return int(db.llen(queue)) >= burst

    wait_for(released, 900, f"{burst} runs in {queue}", poll_s=0.01)
    got = {"release_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(proc.pid)}
    bench.stop(proc)
    db.close()
    return got


def run_ours(bench: Bench, burst: int, tag: str = "f5") -> dict[str, float]:
    """Store ``burst`` due hourly schedules, run our real beat until all are in the broker."""
    prefix = bench.prefix(tag)
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
    keys = Keys(prefix)
    store = Store(connect(settings), keys)
    now = now_ms()
    before = _used_memory(bench)
    load_ours(store, template(settings, EVERY_MS), range(burst), lambda n: now - 1_000)
    used = _used_since(bench, before, burst)
    stored = int(store.redis.zcard(keys.due))
    listed = int(store.redis.zcard(keys.jobs))
    store.redis.close()
    if stored != burst or listed != burst:
        raise RuntimeError(f"ours: {stored} due and {listed} listed schedules, expected {burst}")
    # job hash and fingerprint key per schedule, and the two index ZSETs its members are in
    kinds = _bytes_under(bench, f"{prefix}:", lambda key: key[len(prefix) + 1 :].split(":")[0])
    expected = {"job": burst, "fp": burst, "due": 1, "jobs": 1}
    per_schedule = _per_schedule(kinds, expected, burst, "ours")
    env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers"}
    proc = bench.spawn(
        "workers", ["beat", "--loglevel", "WARNING", "-S", "beat.RedisScheduler"], env, f"{tag}-ours-beat"
    )
    got = _release(bench, proc, keys.beat_lock, keys.broker_prefix + settings.queue_for("dev"), burst)
    bench.drop(prefix)
    breakdown = {f"bytes_{kind}": size / burst for kind, (_, size) in kinds.items()} | used
    return {**got, "bytes_per_schedule": per_schedule, "stored": stored, **breakdown}


def run_redbeat(bench: Bench, burst: int, tag: str = "f5p") -> dict[str, float]:
    """Store ``burst`` due hourly RedBeat entries, run a real RedBeat beat until all are sent."""
    prefix = bench.prefix(tag)
    app = make_app(bench.url, prefix)
    every = timedelta(milliseconds=EVERY_MS)
    last = datetime.now(UTC) - every - timedelta(seconds=1)
    before = _used_memory(bench)
    load_redbeat(app, (f"s{n}" for n in range(burst)), lambda name: last, every)
    used = _used_since(bench, before, burst)
    db = bench.client()
    stored = int(db.zcard(app.redbeat_conf.schedule_key))
    db.close()
    if stored != burst:
        raise RuntimeError(f"RedBeat: {stored} schedules stored, expected {burst}")
    schedule_key = str(app.redbeat_conf.schedule_key)
    kinds = _bytes_under(
        bench, redbeat_prefix(prefix), lambda key: "zset" if key == schedule_key else "entry"
    )
    per_schedule = _per_schedule(kinds, {"entry": burst, "zset": 1}, burst, "RedBeat")
    proc = bench.spawn(
        "bench.plain_app",
        ["beat", "--loglevel", "WARNING", "-S", "redbeat.RedBeatScheduler"],
        {"BENCH_PREFIX": prefix},
        f"{tag}-redbeat",
    )
    got = _release(bench, proc, f"{redbeat_prefix(prefix)}:lock", queue_key(prefix), burst)
    app.close()
    bench.drop(prefix)
    breakdown = {f"bytes_{kind}": size / burst for kind, (_, size) in kinds.items()} | used
    return {**got, "bytes_per_schedule": per_schedule, "stored": stored, **breakdown}


def beat_burst(bench: Bench, reps: int, bursts: tuple[int, ...] = (1_000, 10_000, 100_000)) -> list[Row]:
    """Per burst size: peak RSS and release time of the real beat processes, and Redis bytes per
    stored schedule, ours vs RedBeat."""
    results: dict[int, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for burst in bursts:
        sides = [("ours", run_ours), ("theirs", run_redbeat)]
        for rep in range(reps if burst < 100_000 else min(reps, BIG_BURST_REPS)):
            for side, run in sides if rep % 2 == 0 else reversed(sides):
                results[burst][side].append(run(bench, burst))
    command = ".venv/bin/python -m bench --only 5" + (
        " (--quick: 1,000 and 10,000 due)" if 100_000 not in bursts else ""
    )
    rows = []
    for burst in bursts:
        got = results[burst]

        def of(side: str, what: str, got: Any = got) -> list[float]:
            return [r[what] for r in got[side]]

        details = {side: got[side] for side in ("ours", "theirs")}
        rows += [
            row(
                f"5 beat process peak RSS, {burst:,} due at once",
                "MB",
                of("ours", "peak_rss_mb"),
                of("theirs", "peak_rss_mb"),
                "<= 1x (at or below RedBeat)",
                lambda o, t, r: r <= 1,
                theirs_label="RedBeat",
                details=details,
                command=command,
            ),
            row(
                f"5 (info) beat process release time, {burst:,} due at once, from holding the lock",
                "s",
                of("ours", "release_s"),
                of("theirs", "release_s"),
                "-",
                None,
                theirs_label="RedBeat",
                command=command,
            ),
            row(
                f"5 Redis bytes per stored schedule ({burst:,} stored, count checked)",
                "bytes",
                of("ours", "bytes_per_schedule"),
                of("theirs", "bytes_per_schedule"),
                "<= 1x (at or below RedBeat)",
                lambda o, t, r: r <= 1,
                theirs_label="RedBeat",
                details={
                    side: [{k: v for k, v in r.items() if k.startswith("bytes")} for r in got[side]]
                    for side in ("ours", "theirs")
                },
                command=command,
            ),
        ]
    return rows


# -- an idle worker: main process and pool children -------------------------------------------

IDLE_SETTLE_S = 3.0  # after the pool children exist: start-up allocations done, nothing run yet
AFTER_RUNS = 2_000  # then this many no-op runs, and the same worker is read again


def _descendants(pid: int) -> list[int]:
    """``pid``'s child processes and theirs (the prefork pool), from /proc."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(stat.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except OSError:  # gone meanwhile
                continue
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def smaps_kb(pid: int) -> dict[str, int]:
    """Resident (RSS), proportional (PSS: each shared page divided among the processes sharing it)
    and unique (USS: private pages only) memory of a process, kB, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                fields[name] = int(value.split()[0])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": uss}


def tree_memory_mb(pid: int, processes: int) -> dict[str, Any]:
    """RSS, PSS and USS summed over ``pid`` and its descendants, MB, once there are ``processes``."""

    def pool() -> list[int]:
        found = _descendants(pid)
        return found if len(found) + 1 >= processes else []

    pids = [pid, *wait_for(pool, 60, f"{processes - 1} pool processes")]
    each = [smaps_kb(p) for p in pids]
    got: dict[str, Any] = {f"{k}_mb": sum(e[k] for e in each) / 1024 for k in ("rss", "pss", "uss")}
    got["per_process_pss_mb"] = [round(e["pss"] / 1024, 1) for e in each]
    return got


def _run_noops(bench: Bench, side: str, prefix: str, n: int) -> None:
    """Have the side's worker run ``n`` no-op jobs (one INCR each) and wait until all have."""
    db = bench.client()
    if side == "ours":
        settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
        with Ductape(settings=settings) as ductape:
            ductape.job.schedule_many([{**REQUEST, "input": {"n": i}} for i in range(n)])
    else:
        app = make_app(bench.url, prefix, delivery="ours")
        task = app.tasks[TASK]
        with app.producer_or_acquire() as producer, producer.batch():
            for _ in range(n):
                task.apply_async(producer=producer)
        app.close()
    wait_for(lambda: int(db.get(counter_key(prefix)) or 0) >= n, 300, f"{n} no-op runs under {prefix}")
    db.close()


def run_idle_worker(
    bench: Bench, side: str, concurrency: int, tag: str = "f12", then_runs: int = 0
) -> dict[str, Any]:
    """Start a real worker (ours, or plain Celery with our delivery settings), wait until it is
    ready and its pool children are up, let it sit idle, and read its memory; with ``then_runs``,
    have it run that many no-op jobs and read it again (``after``)."""
    pool = ["worker", "-P", "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle"]
    pool += ["--loglevel", "WARNING"]
    prefix = bench.prefix(f"{tag}{side[0]}")
    db = bench.client()
    if side == "ours":
        env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers"}
        proc = bench.spawn("workers", pool, env, f"{tag}-ours-worker")
        workers_key = Keys(prefix).workers

        def ready() -> bool:
            bench.check_alive(proc)
            return bool(db.hlen(workers_key))
    else:
        env = {"BENCH_PREFIX": prefix, "BENCH_DELIVERY": "ours"}
        proc = bench.spawn("bench.plain_app", [*pool, "-Q", QUEUE], env, f"{tag}-plain-worker")

        def ready() -> bool:
            bench.check_alive(proc)
            return bool(db.exists(f"{prefix}:bench:plain-ready"))

    try:
        wait_for(ready, 120, f"the {side} worker to be ready", poll_s=0.05)
        tree_memory_mb(proc.pid, concurrency + 1)  # the pool is up
        time.sleep(IDLE_SETTLE_S)
        bench.check_alive(proc)
        got = tree_memory_mb(proc.pid, concurrency + 1)
        if then_runs:
            _run_noops(bench, side, prefix, then_runs)
            time.sleep(IDLE_SETTLE_S)
            bench.check_alive(proc)
            got["after"] = tree_memory_mb(proc.pid, concurrency + 1)
        return got
    finally:
        bench.stop(proc)
        db.close()
        bench.drop(prefix)


def idle_worker(bench: Bench, reps: int, concurrency: int = 2, then_runs: int = AFTER_RUNS) -> list[Row]:
    """An idle worker's memory, main process and pool children summed, ours vs plain Celery with
    the same delivery settings and pool: PSS (the headline), RSS and USS."""
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sides = ["ours", "theirs"]
    for rep in range(reps):
        for side in sides if rep % 2 == 0 else reversed(sides):
            results[side].append(run_idle_worker(bench, side, concurrency, then_runs=then_runs))

    def of(side: str, what: str) -> list[float]:
        return [r[what] for r in results[side]]

    label = "Celery, same delivery settings"
    pool = f"prefork -c {concurrency}"
    details = {
        "pool": pool,
        "measured": "/proc/<pid>/smaps_rollup of the main process and its pool children, summed, "
        f"{IDLE_SETTLE_S:g} s after the worker is ready and its pool is up, nothing run; then "
        f"again {IDLE_SETTLE_S:g} s after it has run {then_runs:,} no-op jobs (after)",
        **{side: results[side] for side in sides},
    }
    command = ".venv/bin/python -m bench --only 12"
    return [
        row(
            f"12 idle worker memory, PSS of main + pool ({pool})",
            "MB",
            of("ours", "pss_mb"),
            of("theirs", "pss_mb"),
            "<= 1x (at or below plain Celery)",
            lambda o, t, r: r <= 1,
            theirs_label=label,
            details=details,
            command=command,
        ),
        row(
            f"12 (info) idle worker memory, RSS of main + pool ({pool}; shared pages counted in each)",
            "MB",
            of("ours", "rss_mb"),
            of("theirs", "rss_mb"),
            "-",
            None,
            theirs_label=label,
            command=command,
        ),
        row(
            f"12 (info) the same worker after {then_runs:,} no-op runs, PSS of main + pool ({pool})",
            "MB",
            [r["after"]["pss_mb"] for r in results["ours"] if "after" in r],
            [r["after"]["pss_mb"] for r in results["theirs"] if "after" in r],
            "-",
            None,
            theirs_label=label,
            command=command,
        ),
        row(
            f"12 (info) idle worker memory, USS of main + pool ({pool}; private pages only)",
            "MB",
            of("ours", "uss_mb"),
            of("theirs", "uss_mb"),
            "-",
            None,
            theirs_label=label,
            command=command,
        ),
    ]
