"""The bench still runs against the product: every figure module imports, and the pieces that can
run in a few seconds run at a tiny size on the test server, so a refactor of the product that
breaks ``make bench`` (a moved method, a renamed key, a changed script) fails the suite.

The curves run at one tiny point each with real processes: figure 3's worker drains (no-op and the
handler-work curve), figure 5's beat bursts and figure 6's rate sweep (both sides, real ``celery
beat``). Figure 12's idle worker runs once, ours, with one pool child, then after 5 runs. Figure 8
(minutes of soak) is only imported. The charts are drawn from a small results file, and the
README's commands (``python -m bench.charts``, ``python -m bench --aof``) run as subprocesses.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench import figures as figure_modules
from bench.__main__ import _figures, _parse, reps_for
from bench.charts import draw, slug
from bench.env import ROOT, Bench
from bench.figures.beat import beat_release
from bench.figures.e2e import end_to_end
from bench.figures.lateness import lateness
from bench.figures.memory import beat_burst, run_idle_worker
from bench.figures.producer import schedule_batch, schedule_latency, schedule_one_by_one
from bench.figures.replicas import replica_wait
from bench.figures.shards import release_rate
from bench.figures.sizing import sizing
from bench.plain_app import OUR_DELIVERY
from bench.report import Point, Row, read_json, row, table, write_json
from bench.rss_probe import main as rss_probe
from ductape_jobs.celery_app import create_app
from ductape_jobs.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n"


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
    # noisy figures repeat 5 times by default; --quick is a short pass; --reps sets every figure
    assert reps_for(3, _parse([])) == reps_for(6, _parse([])) == 5
    assert reps_for(6, _parse(["--quick"])) == 2 and reps_for(4, _parse(["--reps", "7"])) == 7
    assert _parse(["--aof"]).aof and not _parse([]).aof
    assert _parse(["--only", "3", "--against", "af8e590"]).against == "af8e590"  # as the README runs it


def test_the_replica_wait_figure_runs_at_a_tiny_size(bench: Bench) -> None:
    rows = measured(replica_wait(bench, 1, n=10, due=20))
    assert len(rows) == 3 and all("DUCTAPE_WAIT_REPLICAS=1" in r.figure for r in rows)


def test_producer_figures_run_at_a_tiny_size(bench: Bench) -> None:
    measured(schedule_one_by_one(bench, 1, n=10))
    rows = measured(schedule_batch(bench, 1, n=20))
    assert {"twins", "mixed", "recurring", "session", "kombu_batch"} <= set(rows[0].details["jobs_per_s"])
    latency = measured(schedule_latency(bench, 1, {100: 3, 10_000: 3, 200_000: 3}))
    assert len(on_curve(latency, "11 schedule() latency by input size")) == 6


def test_beat_release_and_redis_cpu_run_at_a_tiny_size(bench: Bench) -> None:
    rows = measured(beat_release(bench, 1, stored=60, due=20))
    assert any(r.figure.startswith("7 Redis CPU per released run") for r in rows)


def test_sizing_runs_at_a_tiny_size(bench: Bench) -> None:
    # used_memory deltas of 10 records are noise (the server may still free an earlier test's
    # keys): only that the figure runs and gives numbers is checked here
    measured(sizing(bench, 1, n=10), positive=False)


def on_curve(rows: list[Row], chart: str) -> list[Row]:
    """The rows of one chart, each with both sides measured."""
    points = [r for r in rows if r.point and r.point.chart == chart]
    assert points, [r.figure for r in rows]
    for r in points:
        assert math.isfinite(r.ours) and math.isfinite(r.theirs), r
    return points


def test_real_beat_processes_release_a_tiny_burst_timed_from_the_due_instant(bench: Bench) -> None:
    rows = measured(beat_burst(bench, 1, bursts=(20,)))
    release = [r for r in on_curve(rows, "5 beat release by due burst") if "release time" in r.figure]
    assert len(release) == 1 and release[0].point and release[0].point.x == 20
    for side in ("ours", "theirs"):
        got = rows[0].details[side][0]
        assert got["stored"] == got["landed"] == 20 and not got["projected"], got
        assert got["peak_rss_mb"] > 0 and got["bytes_per_schedule"] > 0 and got["release_s"] >= 0


def test_the_rate_sweep_runs_real_beats_of_both_sides_at_a_tiny_rate(bench: Bench) -> None:
    rows = measured(lateness(bench, 2, rates=(20,)), positive=False)
    points = on_curve(rows, "6 beat release by schedules due per second")
    assert {r.point.panel for r in points if r.point} == {
        "runs released per second",
        "lateness p50, ms",
        "lateness p99, ms",
    }
    released = next(r for r in points if r.unit == "runs/s")
    assert released.ours > 0 and released.theirs > 0 and len(released.samples["ours"]) == 2


def test_end_to_end_drains_and_the_handler_work_curve_run_at_a_tiny_size(bench: Bench) -> None:
    rows = measured(end_to_end(bench, 1, n=20, work_jobs={"1 ms CPU": 10, "10 ms sleep": 10}))
    points = on_curve(rows, "3 end to end by handler work")
    assert [r.point.x_name for r in points if r.point] == ["no-op", "1 ms CPU", "10 ms sleep"]
    # the same drains less their start-up: one per repetition (the warm-up's left out), each shorter
    steady = next(r for r in rows if r.figure.startswith("3 (info) the same drains without"))
    whole = next(r for r in rows if r.figure.startswith("3 end to end, drain 20 no-op"))
    assert len(steady.samples["ours"]) == len(whole.samples["ours"]) == 1
    assert 0 < steady.samples["ours"][0] < whole.samples["ours"][0]
    # what Redis was asked per job during each drain: ours two scripts a run at least (BEGIN_RUN,
    # FINISH_RUN) and FETCH's LRANGE; plain Celery a BRPOP and two MULTI/EXECs (kombu recording the
    # message, then removing it at the ack); each side's handler one INCR
    [ours], [same] = (whole.details["redis_calls_per_job"][k] for k in ("ours", "theirs_same_settings"))
    assert ours["evalsha"] >= 2 and ours["lrange"] > 0 and ours["incrby"] == 1
    assert same["brpop"] >= 1 and same["multi"] >= 2 and same["incrby"] == 1
    # each worker's main process measured after each of its drains
    rss = next(r for r in rows if r.figure.startswith("3 (info) the worker's main process RSS"))
    assert len(rss.samples["ours"]) == len(rss.samples["theirs"]) == 1
    assert rss.samples["ours"][0] > 10 and rss.samples["theirs"][0] > 10


def test_end_to_end_against_another_commit_drains_its_worker_in_turn(bench: Bench) -> None:
    rows = measured(end_to_end(bench, 1, n=20, work_jobs={}, against="HEAD"))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    named = f"HEAD ({head.stdout.strip()})"  # the ref, and the commit it named
    [ab] = [r for r in rows if r.figure == f"3 (info) ours against ours at {named}, the same drains"]
    assert ab.theirs_label == f"ours at {named}" and ab.command.endswith("--against HEAD")
    assert len(ab.samples["ours"]) == len(ab.samples["theirs"]) == 1 and ab.samples["theirs"][0] > 0
    # that worker ran from a work tree of HEAD, which is gone again
    assert "ours_at_ref" in ab.details["drain_s"]
    trees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "bench-against-" not in trees


def _results(path: Path) -> Path:
    """A small results file with one two-panel curve, one categorical curve and a plain row."""
    curve, work = Point("6 a curve", "p99", 0, "rate"), Point("3 by work", "jobs/s", 0, "handler work")
    rows = [
        row(f"6 p99 at {x}", "ms", [x / 10, x / 8], [x, x * 2], "-", None, point=replace(curve, x=x))
        for x in (100, 1_000, 20_000)
    ]
    rows += [
        row(f"6 rate {x}", "runs/s", [x], [x / 2], "-", None, point=replace(curve, panel="delivered", x=x))
        for x in (100, 1_000, 20_000)
    ]
    rows += [
        row(f"3 {name}", "jobs/s", [900, 1_100], [800, 950], "-", None, point=replace(work, x=i, x_name=name))
        for i, name in enumerate(("no-op", "1 ms CPU"))
    ]
    rows[-1].details["projected"] = ["theirs"]  # drawn hollow
    rows.append(row("1 not a curve", "jobs/s", [1.0], [2.0], "-", None))
    write_json(path, rows, {"commit": "abc1234", "when": "2026-12-01T15:00:00+00:00"})
    return path


def test_charts_are_drawn_from_a_results_file(tmp_path: Path) -> None:
    meta, rows = read_json(_results(tmp_path / "last.json"))
    assert meta["commit"] == "abc1234" and rows[0].point == Point("6 a curve", "p99", 100, "rate")
    written = draw(rows, tmp_path / "charts")
    assert sorted(p.name for p in written) == sorted(f"{slug(c)}.png" for c in ("6 a curve", "3 by work"))
    for path in written:
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 1_000


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150
    )


def test_the_readme_charts_command_draws_pngs_and_prints_the_curve_tables(tmp_path: Path) -> None:
    results = _results(tmp_path / "last.json")
    done = _run("bench.charts", "--results", str(results), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "| rate | ours | theirs | ratio (min-max) |" in done.stdout
    assert (tmp_path / "out" / "6-a-curve.png").read_bytes().startswith(PNG)


def test_the_readme_aof_command_runs_a_figure_on_a_server_with_aof_everysec(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # --aof sets up its own server
    out = tmp_path / "last-aof.json"
    done = _run("bench", "--aof", "--only", "11", "--reps", "1", "--out", str(out), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    meta, rows = read_json(out)
    assert meta["aof"] and "AOF on, appendfsync everysec" in meta["server"]
    assert {"python", "celery", "kombu", "redis", "valkey"} <= set(meta["versions"])
    assert "Wall time per figure: 11:" in done.stdout and len(rows) == 6


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


def test_make_bench_runs_the_bench_with_its_arguments_then_draws_the_charts() -> None:
    # `make bench BENCH_ARGS=--quick` as the README shows it, dry-run: the bench's minutes are
    # not spent here, the wiring is what is checked (charts drawn even when a figure failed)
    # Run from `make test` (CI), this make is a sub-make: its directory lines are left out.
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "bench", "BENCH_ARGS=--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(".venv/bin/python -m bench --quick; status=$?; .venv/bin/python -m bench.charts")
