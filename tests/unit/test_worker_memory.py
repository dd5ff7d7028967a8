"""A worker's pool processes share what the main process loaded (bench figure 12): the collector's
view of it is frozen before each fork, so a child's collections do not copy its pages."""

from __future__ import annotations

from pathlib import Path

from tests.support import fresh_python

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
        "worker_init.send(sender=None)\n"
        "worker_init.send(sender=None)  # a second worker_init registers no second hook\n"
        "tracked = len(gc.get_objects())\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(write, str(gc.get_freeze_count()).encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(before, tracked, os.read(read, 64).decode())\n"
        "from ductape_jobs import jobfields\n"
        "from ductape_jobs.terms import JobSpec\n"
        "spec = JobSpec(env='dev', product_tag='p', event='e', retries=0, input={'n': 1}, created_ms=1)\n"
        "assert jobfields.read_spec(jobfields.pack_spec(spec)) == spec  # what a run reads\n"
        "print(sorted(m for m in ('pydantic', 'pydantic_core', 'ductape_jobs.models') if m in sys.modules))\n"
    )
    # bench.handlers imports no pydantic (examples.handlers and tests.handlers do: their models).
    counts, heavy = fresh_python(code, handlers="bench.handlers").splitlines()
    before, tracked, in_child = (int(n) for n in counts.split())
    # A run's spec is a plain dataclass (terms.JobSpec): neither start-up nor reading one loads
    # pydantic (~10 MB a process), unless a handler module imports it itself.
    assert heavy == "[]"
    assert before == 0  # nothing is frozen by merely making the app (tests, producers, beat)
    assert tracked > 10_000 and in_child >= tracked * 0.9  # all start-up left, not a few
