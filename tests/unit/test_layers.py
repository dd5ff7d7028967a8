"""Imports point one way (docs/design.md §1): read from the sources, so a wrong-way import fails here.

Each module's imports are parsed (also those inside functions) and followed through the project's
own modules; a package's ``__init__`` is not followed, since importing ``ductape_jobs.timing``
runs ``ductape_jobs/__init__`` only because of where the file sits, not because timing needs it.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.support import fresh_python

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ductape_jobs", "beat", "workers")

# The pure core: no I/O, no Celery, no Redis; they import only each other.
PURE = {
    f"ductape_jobs.{name}"
    for name in (
        "brief",
        "clock",
        "errors",
        "health",
        "imported",
        "jitter",
        "jobfields",
        "keyring",
        "keys",
        "models",
        "planning",
        "records",
        "registry",
        "scripts",
        "terms",
        "scrub",
        "sealed",
        "sessions",
        "settings",
        "timing",
        "tracing",
        "updating",
        "urls",
    )
}
CELERY = ("celery", "kombu", "billiard")
REDIS = ("redis", "hiredis")
# Where Celery may be imported: the message builder, the app factory, the task-sent events,
# Flower's guard, kombu's transport fix, and the thin adapters (the workers app and its event
# loop's timer bootstep, beat's scheduler and its beat_schedule reader).
CELERY_USERS = {
    "ductape_jobs.wire",
    "ductape_jobs.celery_app",
    "ductape_jobs.events",
    "ductape_jobs.flower_guard",
    "ductape_jobs.transport",
    "workers.factory",
    "workers.hub_timers",
    "beat.scheduler",
    "beat.imported",
}


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_of(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@cache
def imported(module: str) -> frozenset[str]:
    """The module names ``module`` imports directly (``from a import b`` gives ``a.b`` when that
    is a module of ours, else ``a``)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(subs or {node.module})
    return frozenset(found)


@cache
def reaches(module: str) -> frozenset[str]:
    """Every module ``module`` loads through its own imports, ours followed to the end."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in imported(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name in MODULES and MODULES[name].name != "__init__.py":
                    todo.append(name)
    return frozenset(seen)


def _outside(names: frozenset[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in roots)


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_pure_core_imports_only_itself(module: str):
    ours = {n for n in reaches(module) if n.split(".")[0] in PACKAGES and n != "ductape_jobs"}
    assert ours <= PURE, f"{module} reaches {sorted(ours - PURE)}"
    assert not _outside(reaches(module), CELERY + REDIS), module


@pytest.mark.parametrize("module", sorted(set(MODULES) - CELERY_USERS))
def test_celery_is_imported_only_by_its_adapters(module: str):
    direct = _outside(imported(module), CELERY)
    assert not direct, f"{module} imports {direct}; only {sorted(CELERY_USERS)} may"


@pytest.mark.parametrize(
    "module",
    [
        "ductape_jobs.store",
        "ductape_jobs.ops",
        "ductape_jobs.ops.beat",
        "ductape_jobs.ops.worker",
        "ductape_jobs.runner",
        "beat.engine",
    ],
)
def test_the_data_layer_the_runner_and_beats_engine_load_no_celery(module: str):
    assert not _outside(reaches(module), CELERY), module


@pytest.mark.parametrize("module", ["ductape_jobs.runner", "ductape_jobs.heartbeat"])
def test_the_runner_takes_its_store_and_does_not_import_it(module: str):
    data_layer = {"ductape_jobs.store", "ductape_jobs.ops", "ductape_jobs.astore", "ductape_jobs.wire"}
    reached = {m.rsplit(".", 1)[0] if m.startswith("ductape_jobs.ops.") else m for m in reaches(module)}
    assert not data_layer & reached, module
    assert not _outside(reaches(module), CELERY + REDIS), module


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("ductape_jobs", ("workers", "beat")), ("beat", ("workers",)), ("workers", ("beat",))],
)
def test_packages_keep_to_their_side(package: str, forbidden: tuple[str, ...]):
    for module in (m for m in MODULES if m.split(".")[0] == package):
        assert not _outside(imported(module), forbidden), module


def test_the_clock_and_connections_come_from_their_own_modules():
    home = {"now_ms": "ductape_jobs.clock", "connect": "ductape_jobs.connection"}
    home["connect_async"] = home["connect"]
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    where = home.get(alias.name, node.module)
                    assert node.module == where, f"{module} takes {alias.name} from {node.module}"


def test_a_pure_module_loads_without_celery_or_the_store():
    # The same rule at run time, in a fresh interpreter: planning (the top of the pure core) is
    # loaded from its file, without the package __init__ (which brings the clients).
    code = (
        "import importlib.util, sys, types\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "pkg = types.ModuleType('ductape_jobs'); pkg.__path__ = "
        f"[{str(ROOT / 'ductape_jobs')!r}]; sys.modules['ductape_jobs'] = pkg\n"
        "importlib.import_module('ductape_jobs.planning')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'redis')"
        " or m in ('ductape_jobs.store', 'ductape_jobs.wire') or m.startswith('ductape_jobs.ops')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_importing_workers_makes_nothing_and_celery_finds_its_app_without_connecting():
    # Redis at a closed port: any connection attempt would fail the import or the app's making.
    # The handlers live in the working directory, off sys.path, as under the `celery` command:
    # Celery's own lookup (find_app, what `celery -A workers` runs) must still load them.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import os, sys\n"
        "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
        "import workers\n"
        "assert 'examples.handlers' not in sys.modules, 'importing workers loaded the handlers'\n"
        "assert 'workers.celery' not in sys.modules, 'importing workers made the app'\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('workers')\n"
        "print(sorted(name for name in app.tasks if name.startswith('demo.')))\n"
    )
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "DUCTAPE_HANDLERS": "examples.handlers"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['demo.tick']"


# Loaded by nothing a worker runs, or only once a session type is configured (cryptography's Rust
# library and PyJWT: ~10 MB in every process of the pool); the producer clients, the CLI and beat.
NOT_IN_A_WORKER = (
    "jwt",
    "cryptography.hazmat",
    "ductape_jobs.client",
    "ductape_jobs.aclient",
    "ductape_jobs.astore",
    "ductape_jobs.flows",
    "ductape_jobs.cli",
    "ductape_jobs.twins",
    "ductape_jobs.updating",
    "beat",
    "flower",
    "prometheus_client",
)


def test_a_worker_loads_nothing_heavy_it_does_not_use():
    # What `celery -A workers worker` loads before it forks its pool: every pool process carries it
    # (the idle worker's memory is bench figure 12). Run in a fresh interpreter, as Celery runs it.
    code = (
        "import sys\n"
        "from celery.app.utils import find_app\n"
        "find_app('workers')\n"
        f"heavy = {NOT_IN_A_WORKER!r}\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy)))\n"
        "print('ductape_jobs.runner' in sys.modules)\n"
    )
    assert fresh_python(code).split("\n")[:2] == ["[]", "True"]  # nothing heavy; and the worker was made


def test_beat_loads_no_handler_no_models_and_no_pydantic():
    # What `celery -A beat beat` loads: its app and the scheduler Celery makes from it. Beat reads
    # briefs and settings, never a validated model: no pydantic (~10 MB; bench figure 5's beat
    # memory), no handler module, no runner, no Prometheus client unless it serves metrics.
    code = (
        "import sys\n"
        "from celery.app.utils import find_app\n"
        "from celery.utils.imports import symbol_by_name\n"
        "app = find_app('beat')\n"
        "scheduler = symbol_by_name(app.conf.beat_scheduler)(app=app, lazy=True)\n"
        "heavy = ('pydantic', 'pydantic_core', 'ductape_jobs.models', 'ductape_jobs.runner', "
        "'examples.handlers', 'prometheus_client', 'workers')\n"
        "print(type(scheduler).__name__, sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert fresh_python(code).strip() == "RedisScheduler []"


def test_only_beats_leadership_touches_the_leader_lock():
    # One owner of the fencing token: nothing else takes, renews or releases the lock.
    lock_calls = {"acquire_lock", "renew_lock", "release_lock", "renew_locks"}
    for module, path in MODULES.items():
        if module in ("beat.leader", "ductape_jobs.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr not in lock_calls, f"{module} calls {node.attr}; only beat.leader may"
