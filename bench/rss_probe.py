"""A beat engine in its own process, for figure 5: tick until the due runs are out, report RSS.

``python -m bench.rss_probe URL PREFIX EXPECTED`` prints one JSON line: resident memory after
start-up (imports, engine built, leader), and the peak and final resident memory after ticking.
"""

from __future__ import annotations

import json
import sys
import time

from beat.engine import BeatEngine
from ductape_jobs.celery_app import create_app
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from ductape_jobs.wire import MessageBuilder


def memory_kb() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of this process, in kB."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def main(url: str, prefix: str, expected: int) -> None:
    """Tick until ``expected`` runs are released (or 120 s pass); print the measurements."""
    settings = Settings(redis_url=url, key_prefix=prefix, require_handler=False)
    engine = BeatEngine(
        Store(connect(settings), Keys(prefix)),
        settings,
        MessageBuilder(create_app(settings), settings),
        "rss",
    )
    engine.leadership.lead()
    started = memory_kb()
    released = ticks = 0
    deadline = time.monotonic() + 120
    start = time.perf_counter()
    while released < expected and time.monotonic() < deadline:
        released += engine.tick(now_ms()).released
        ticks += 1
    elapsed = time.perf_counter() - start
    engine.step_down()
    after = memory_kb()
    print(
        json.dumps(
            {
                "start_rss_kb": started["VmRSS"],
                "rss_kb": after["VmRSS"],
                "peak_rss_kb": after["VmHWM"],
                "released": released,
                "ticks": ticks,
                "tick_s": elapsed,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
