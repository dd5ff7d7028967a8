"""Figure 10: beat never loads inputs. 1,000 due schedules with 256 KiB inputs vs 100-byte inputs.

The beat engine runs in a fresh subprocess (bench.rss_probe) per measurement, releasing the
1,000 due runs; each reading is that process's tick time (until all are out) and its peak
resident memory. Beat reads a job's brief (ductape_jobs/brief.py), never its spec, so the size of
the input must not show in either.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.env import ROOT, Bench
from bench.figures.beat import EVERY_MS
from bench.load import load_ours, template
from bench.report import Row, row
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

BIG = 256 * 1024 - 64  # the largest input schedule() takes by default, less its other fields
SMALL = 100


def _probe(bench: Bench, prefix: str, due: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.rss_probe", bench.url, prefix, str(due)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rss probe failed:\n{done.stderr[-3000:]}")
    got: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if got["released"] < due:
        raise RuntimeError(f"rss probe released {got['released']} of {due} runs")
    return got


def _input(size: int) -> Any:
    def input_of(n: int) -> dict[str, Any]:
        head = {"n": n, "blob": ""}
        return {"n": n, "blob": "x" * (size - len(str(head)) - 4)}

    return input_of


def beat_inputs(bench: Bench, reps: int, due: int = 1_000) -> list[Row]:
    """Tick time and peak RSS of a beat releasing ``due`` runs of 256 KiB vs 100-byte inputs."""
    sizes = {"big": BIG, "small": SMALL}
    prefixes = {name: bench.prefix(f"f10{name[0]}") for name in sizes}
    readings: dict[str, list[dict[str, float]]] = {name: [] for name in sizes}
    server_us: dict[str, list[float]] = {name: [] for name in sizes}
    db = bench.client()
    for rep in range(max(reps, 3)):
        for name in sizes if rep % 2 == 0 else reversed(list(sizes)):
            settings = Settings(redis_url=bench.url, key_prefix=prefixes[name], require_handler=False)
            store = Store(connect(settings), Keys(prefixes[name]))
            now = now_ms()
            load_ours(
                store,
                template(settings, EVERY_MS),
                range(due),
                lambda n, now=now: now - 1_000,
                restore=rep > 0,
                input_of=_input(sizes[name]),
                chunk=50,  # 50 x 256 KiB per CREATE_JOBS call
            )
            store.redis.close()
            time.sleep(0.2)  # let the server settle after the load (untimed)
            before = db.info("commandstats").get("cmdstat_evalsha", {})
            readings[name].append(_probe(bench, prefixes[name], due))
            after = db.info("commandstats").get("cmdstat_evalsha", {})
            calls = after.get("calls", 0) - before.get("calls", 0)
            server_us[name].append((after.get("usec", 0) - before.get("usec", 0)) / max(calls, 1))
    db.close()
    for prefix in prefixes.values():
        bench.drop(prefix)

    def of(name: str, what: str, scale: float = 1.0) -> list[float]:
        return [r[what] * scale for r in readings[name]]

    command = ".venv/bin/python -m bench --only 10"
    return [
        row(
            f"10 beat tick time, {due:,} due with 256 KiB vs 100-byte inputs",
            "s",
            of("big", "tick_s"),
            of("small", "tick_s"),
            "<= 1.2x",
            lambda o, t, r: r <= 1.2,
            theirs_label="100 B inputs",
            details={"ticks": {n: of(n, "ticks") for n in sizes}, "server_us_per_script": server_us},
            command=command,
        ),
        row(
            f"10 beat peak RSS, {due:,} due with 256 KiB vs 100-byte inputs",
            "MB",
            of("big", "peak_rss_kb", 1 / 1024),
            of("small", "peak_rss_kb", 1 / 1024),
            "<= 1.2x",
            lambda o, t, r: r <= 1.2,
            theirs_label="100 B inputs",
            details={"start_rss_mb": {n: of(n, "start_rss_kb", 1 / 1024) for n in sizes}},
            command=command,
        ),
    ]
