"""A worker's pool processes share what the main process loaded (bench figure 12): the collector's
view of it is frozen before each fork, so a child's collections do not copy its pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_pool_process_is_forked_with_start_up_frozen():
    # In a fresh interpreter, as `celery -A workers worker` runs: the app is made, Celery sends
    # worker_init, then forks its pool (billiard uses os.fork, which runs the at-fork hooks).
    code = (
        "import gc, os, sys\n"
        "from celery.app.utils import find_app\n"
        "from celery.signals import worker_init\n"
        "find_app('workers')\n"
        "before = gc.get_freeze_count()\n"
        "models = 'ductape_jobs.models' in sys.modules\n"
        "worker_init.send(sender=None)\n"
        "models = (models, 'ductape_jobs.models' in sys.modules)\n"
        "worker_init.send(sender=None)  # a second worker_init registers no second hook\n"
        "tracked = len(gc.get_objects())\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(write, str(gc.get_freeze_count()).encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(before, tracked, os.read(read, 64).decode())\n"
        "print(*models)\n"
    )
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", "DUCTAPE_HANDLERS": "examples.handlers"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    counts, models = done.stdout.splitlines()
    before, tracked, in_child = (int(n) for n in counts.split())
    # The validated models every run reads its spec through load at worker_init, before the fork,
    # not in each pool process on its first run (nor in beat, which builds this app too).
    assert models == "False True"
    assert before == 0  # nothing is frozen by merely making the app (tests, producers, beat)
    assert tracked > 10_000 and in_child >= tracked * 0.9  # all start-up left, not a few
