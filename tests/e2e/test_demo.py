"""`make demo`, as the README shows it: an embedded server, a worker, a beat, the seed's examples."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_runs_the_seeds_examples_and_stops_what_it_started() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the fresh-machine path
    command = ["make", "--no-print-directory", "demo"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "started an embedded Valkey server" in out
    for example in ("Quick Example", "Run immediately", "Schedule for a specific time", "With session data"):
        assert re.search(rf"{re.escape(example)}\s+completed runs 1", out), (example, out[-4000:])
    for example in ("Recurring job with interval", "Limited recurring job", "Recurring job until a date"):
        assert re.search(rf"{re.escape(example)}[^\n]*\s+scheduled runs 1", out), (example, out[-4000:])
    assert "Demo: every 2 s, 5 times: 5 runs" in out
    assert "Demo: cron every 3 s (6-field), 4 times: 4 runs" in out
    assert "stopped the worker, the beat and the embedded server" in out
