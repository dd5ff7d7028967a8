"""The bench still runs against the product: every figure module imports, and the pieces that can
run in a few seconds run at a tiny size on the test server, so a refactor of the product that
breaks ``make bench`` (a moved method, a renamed key, a changed script) fails the suite.

Figures 3, 6 and 8 (worker fleets, 15 s windows, minutes of soak) are only imported; figure 5's
real ``celery beat`` run is done once, for our side, at 20 due schedules; figure 12's idle worker
once, ours, with one pool child, then after 5 runs.
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import figures as figure_modules
from bench.__main__ import _figures, _parse
from bench.env import Bench
from bench.figures.beat import beat_release
from bench.figures.memory import run_idle_worker, run_ours
from bench.figures.producer import schedule_batch, schedule_latency, schedule_one_by_one
from bench.figures.replicas import replica_wait
from bench.figures.shards import release_rate
from bench.figures.sizing import sizing
from bench.plain_app import OUR_DELIVERY
from bench.report import Row, table
from bench.rss_probe import main as rss_probe
from ductape_jobs.celery_app import create_app
from ductape_jobs.settings import Settings


@pytest.fixture
def bench(redis_url: str, tmp_path: Path) -> Iterator[Bench]:
    """A bench run on the test server, its process logs under tmp_path."""
    run = Bench(redis_url, None, log_dir=tmp_path)
    yield run
    run.stop_all()


def measured(rows: list[Row], *, positive: bool = True) -> list[Row]:
    """The rows, after checking each carries a number for our side and prints in the table."""
    assert rows
    for r in rows:
        assert math.isfinite(r.ours) and (r.ours > 0 or not positive), r
    assert table(rows).count("\n") == len(rows) + 1
    return rows


def test_every_figure_module_imports_and_every_figure_is_wired() -> None:
    names = [m.name for m in pkgutil.iter_modules(figure_modules.__path__)]
    assert {"beat", "e2e", "inputs", "lateness", "memory", "producer", "replicas", "sizing", "soak"} <= set(
        names
    )
    for name in names:
        importlib.import_module(f"bench.figures.{name}")
    assert set(_figures(quick=True)) == {1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14}
    args = _parse(["--only", "3,7", "--reps", "1", "--quick"])  # as the README runs it
    assert (args.only, args.reps, args.quick) == ("3,7", 1, True)


def test_the_replica_wait_figure_runs_at_a_tiny_size(bench: Bench) -> None:
    rows = measured(replica_wait(bench, 1, n=10, due=20))
    assert len(rows) == 3 and all("DUCTAPE_WAIT_REPLICAS=1" in r.figure for r in rows)


def test_producer_figures_run_at_a_tiny_size(bench: Bench) -> None:
    measured(schedule_one_by_one(bench, 1, n=10))
    rows = measured(schedule_batch(bench, 1, n=20))
    assert {"twins", "mixed", "recurring", "session", "kombu_batch"} <= set(rows[0].details["jobs_per_s"])
    assert len(measured(schedule_latency(bench, 1, {100: 3, 10_000: 3, 200_000: 3}))) == 6


def test_beat_release_and_redis_cpu_run_at_a_tiny_size(bench: Bench) -> None:
    rows = measured(beat_release(bench, 1, stored=60, due=20))
    assert any(r.figure.startswith("7 Redis CPU per released run") for r in rows)


def test_sizing_runs_at_a_tiny_size(bench: Bench) -> None:
    # used_memory deltas of 10 records are noise (the server may still free an earlier test's
    # keys): only that the figure runs and gives numbers is checked here
    measured(sizing(bench, 1, n=10), positive=False)


def test_a_real_beat_process_releases_a_tiny_burst(bench: Bench) -> None:
    got = run_ours(bench, 20, tag="t5")
    assert got["stored"] == 20 and got["peak_rss_mb"] > 0 and got["bytes_per_schedule"] > 0


def test_the_rss_probe_builds_and_leads_a_beat_engine(
    bench: Bench, capsys: pytest.CaptureFixture[str]
) -> None:
    rss_probe(bench.url, bench.prefix("probe"), 0)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["released"] == 0


def test_the_plain_apps_same_settings_are_still_ours() -> None:
    # Written out in bench/plain_app.py so a plain worker loads none of our package.
    conf = create_app(Settings()).conf
    assert {name: conf[name] for name in OUR_DELIVERY} == OUR_DELIVERY


def test_an_idle_worker_is_measured_main_and_pool(bench: Bench) -> None:
    got = run_idle_worker(bench, "ours", 1, tag="t12", then_runs=5)
    assert len(got["per_process_pss_mb"]) == 2  # main process and its one pool child
    assert 0 < got["uss_mb"] <= got["pss_mb"] <= got["rss_mb"]
    assert len(got["after"]["per_process_pss_mb"]) == 2 and got["after"]["pss_mb"] > 0


def test_two_real_beat_processes_share_four_shards_and_release_a_tiny_burst(bench: Bench) -> None:
    got = release_rate(bench, 4, 2, 40, "t14")
    # (not the beats' CPU: it is read in 10 ms ticks, and 40 runs may cost none that shows)
    assert got.runs_per_s > 0 and got.redis_cpu_us > 0
