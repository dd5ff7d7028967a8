"""``python -m bench [--only N[,N]] [--reps K] [--quick] [--receivers]``: print the table, write
results/last.json."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version

from celery.signals import after_task_publish, before_task_publish

from bench.env import RESULTS, ROOT, Bench
from bench.figures.beat import beat_release
from bench.figures.e2e import end_to_end
from bench.figures.inputs import beat_inputs
from bench.figures.lateness import lateness
from bench.figures.memory import beat_burst, idle_worker
from bench.figures.producer import schedule_batch, schedule_latency, schedule_one_by_one
from bench.figures.replicas import replica_wait
from bench.figures.shards import several_beats
from bench.figures.sizing import sizing
from bench.figures.soak import soak
from bench.report import Row, table, write_json

NOTE = (
    "Shared 2-core machine: other engineers' test suites may run at the same time, so absolute "
    "figures move between runs; ours and theirs run alternately in the same run, on the same "
    "server, so the ratios stay meaningful."
)


def _figures(quick: bool) -> dict[int, Callable[[Bench, int], list[Row]]]:
    bursts = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    return {
        1: schedule_one_by_one,
        2: schedule_batch,
        3: lambda bench, reps: end_to_end(bench, reps, n=2_000 if quick else 10_000),
        4: beat_release,  # figure 7 (round trips, commands, Redis CPU per run) is measured with it
        5: lambda bench, reps: beat_burst(bench, reps, bursts=bursts),
        6: lateness,
        8: soak,  # minutes long: `make soak` runs it alone
        9: sizing,
        10: beat_inputs,
        11: schedule_latency,
        12: idle_worker,
        13: replica_wait,  # a primary and a replica of its own: the cost of DUCTAPE_WAIT_REPLICAS
        14: lambda bench, reps: several_beats(bench, reps, due=20_000 if quick else 40_000),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="", help="figures to run, e.g. 4 or 1,2 (7 comes with 4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure; medians are reported")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short pass: figure 3 drains 2,000 jobs, not 10,000; figure 5 stops at 10,000 due; "
        "no soak (figure 8) unless named in --only",
    )
    parser.add_argument(
        "--receivers",
        action="store_true",
        help="with a receiver of Celery's before/after_task_publish connected (both sides fire them)",
    )
    return parser.parse_args(argv)


def _heard(**_: object) -> None:
    """A publish-signal receiver that does nothing: what connecting one costs, alone."""


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def main(argv: list[str] | None = None) -> int:
    """Run the chosen figures and print one table."""
    args = _parse(argv)
    logging.getLogger("beat").setLevel(logging.ERROR)  # the in-process engine's leader chatter
    logging.getLogger("ductape_jobs.runner").setLevel(logging.ERROR)  # figure 9's failing runs
    figures = _figures(args.quick)
    chosen = {4 if int(n) == 7 else int(n) for n in args.only.split(",") if n.strip()}
    # --quick leaves the soak (figure 8, minutes long) out unless it is asked for by name
    wanted = sorted(chosen) or sorted(n for n in figures if not (args.quick and n == 8))
    if args.receivers:
        before_task_publish.connect(_heard)
        after_task_publish.connect(_heard)
    started = time.monotonic()
    load_before = os.getloadavg()
    rows: list[Row] = []
    failed: list[str] = []
    with Bench.open() as bench:
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "server": bench.where,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "versions": {
                "python": platform.python_version(),
                **{p: version(p) for p in ("celery", "kombu", "redis", "celery-redbeat")},
            },
            "reps": args.reps,
            "quick": args.quick,
            "receivers": args.receivers,
        }
        print(f"ductape-jobs bench: {meta['server']}, {meta['machine']}, commit {meta['commit']}")
        versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        print(f"versions: {versions}, {meta['server']}")
        quick = " (--quick: figure 3 at 2,000 jobs, figure 5 up to 10,000 due)" if args.quick else ""
        heard = "; publish-signal receivers connected" if args.receivers else ""
        print(f"medians of {args.reps} repetitions, ratio spread min-max over them{quick}{heard}")
        for n in wanted:
            print(f"  figure {n}{' and 7' if n == 4 else ''} ...", end="", flush=True)
            t0 = time.monotonic()
            try:
                rows += figures[n](bench, args.reps)
                print(f" {time.monotonic() - t0:.0f} s", flush=True)
            except Exception:
                failed.append(f"figure {n}: {traceback.format_exc()}")
                print(" FAILED", flush=True)
                bench.stop_all()
    load_after = os.getloadavg()
    meta.update(
        total_s=round(time.monotonic() - started),
        load_avg={"before": load_before, "after": load_after},
        note=NOTE,
        failed=failed,
    )
    rows.sort(key=lambda r: int(r.figure.split()[0]))  # figure 7 is measured with 4, shown last
    print()
    print(table(rows))
    print()
    print(NOTE)
    print(f"Load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {meta['total_s']} s in all.")
    commands = {r.figure.split()[0]: r.command for r in rows if r.command}
    print("One command per figure:", ", ".join(f"{n}: {c}" for n, c in commands.items()))
    for failure in failed:
        print(failure, file=sys.stderr)
    write_json(RESULTS / "last.json", rows, meta)
    print(f"details: {(RESULTS / 'last.json').relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
