"""Figure 5: the beat's memory with 1,000,000 stored schedules vs 1,000, the same number due.

The beat engine runs in a fresh subprocess (bench.rss_probe) per measurement, so each reading
is one process's own resident memory; the stored schedules are loaded once per size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.env import ROOT, Bench
from bench.figures.beat import EVERY_MS, _later_ms
from bench.load import load_ours, template
from bench.report import Row, row
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store


def _probe(bench: Bench, prefix: str, due: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.rss_probe", bench.url, prefix, str(due)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rss probe failed:\n{done.stderr[-3000:]}")
    got: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if got["released"] < due:
        raise RuntimeError(f"rss probe released {got['released']} of {due} runs")
    return got


def beat_memory(
    bench: Bench, reps: int, large: int = 1_000_000, small: int = 1_000, due: int = 1_000
) -> list[Row]:
    """Peak RSS of a beat process releasing ``due`` runs with ``large`` vs ``small`` schedules stored."""
    readings: dict[int, list[dict[str, float]]] = {large: [], small: []}
    load_s: dict[int, float] = {}
    prefixes = {large: bench.prefix("f5l"), small: bench.prefix("f5s")}
    for stored, prefix in prefixes.items():
        settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
        store = Store(connect(settings), Keys(prefix))
        base = template(settings, EVERY_MS)
        start, now = time.perf_counter(), now_ms()
        load_ours(store, base, range(due, stored), lambda n, now=now: _later_ms(n, now))
        load_s[stored] = time.perf_counter() - start
        store.redis.close()
    used_mb = bench.client().info("memory")["used_memory"] / 2**20
    for rep in range(reps):
        for stored in (large, small) if rep % 2 == 0 else (small, large):
            settings = Settings(redis_url=bench.url, key_prefix=prefixes[stored], require_handler=False)
            store = Store(connect(settings), Keys(prefixes[stored]))
            now = now_ms()
            load_ours(
                store,
                template(settings, EVERY_MS),
                range(due),
                lambda n, now=now: now - 1_000,
                restore=rep > 0,
            )
            store.redis.close()
            readings[stored].append(_probe(bench, prefixes[stored], due))
    for prefix in prefixes.values():
        bench.drop(prefix)

    def mb(stored: int, what: str) -> list[float]:
        return [r[what] / 1024 for r in readings[stored]]

    return [
        row(
            f"5 beat peak RSS, {large:,} vs {small:,} stored schedules ({due:,} due)",
            "MB",
            mb(large, "peak_rss_kb"),
            mb(small, "peak_rss_kb"),
            "<= 1.2x",
            lambda o, t, r: r <= 1.2,
            theirs_label=f"{small:,} stored",
            details={
                "start_rss_mb": {"large": mb(large, "start_rss_kb"), "small": mb(small, "start_rss_kb")},
                "tick_s": {
                    "large": [r["tick_s"] for r in readings[large]],
                    "small": [r["tick_s"] for r in readings[small]],
                },
                "load_s": load_s,
                "redis_used_memory_mb_with_both_loaded": used_mb,
            },
            command=".venv/bin/python -m bench --only 5"
            + (" (--quick: 100,000)" if large < 1_000_000 else ""),
        )
    ]
