"""``python -m bench [--only N[,N]] [--reps K] [--quick] [--drain N] [--against REF] [--aof]
[--receivers]``: print the table, write results/last.json (results/last-aof.json with ``--aof``);
``python -m bench.charts`` then draws its curves."""

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
from pathlib import Path

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


NOISY_REPS = 5  # repetitions of a figure by default (median and min-max reported)
# Figures whose repetitions agree closely (counts, bytes, a 15x ratio spread by a few percent) or
# whose peer side takes tens of seconds a repetition run fewer by default; --reps sets them all.
# Figure 14 starts up to seven beat processes a repetition (about a minute of start-ups): three
# keep `make bench` under 15 minutes; `--only 14 --reps 5` for its spread.
FEWER_REPS = {4: 2, 5: 2, 9: 1, 12: 2, 14: 3}
LONG = {8}  # minutes long: only when named in --only (`make soak` runs figure 8 alone)


def _figures(
    quick: bool, drain: int | None = None, against: str | None = None
) -> dict[int, Callable[[Bench, int], list[Row]]]:
    bursts = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    drained = drain if drain is not None else (500 if quick else 1_000)
    rates = (100, 1_000, 5_000) if quick else (100, 1_000, 5_000, 20_000)
    return {
        1: lambda bench, reps: schedule_one_by_one(bench, reps, n=1_000 if quick else 2_000),
        2: lambda bench, reps: schedule_batch(bench, reps, n=2_000 if quick else 3_000),
        3: lambda bench, reps: end_to_end(bench, reps, n=drained, against=against),
        # figure 7 (round trips, commands, Redis CPU per run) is measured with figure 4
        4: lambda bench, reps: beat_release(bench, reps, stored=50_000, due=5_000),
        5: lambda bench, reps: beat_burst(bench, reps, bursts=bursts),
        6: lambda bench, reps: lateness(bench, reps, rates=rates),
        8: soak,
        9: sizing,
        10: beat_inputs,
        11: schedule_latency,
        12: idle_worker,
        13: replica_wait,  # a primary and a replica of its own: the cost of DUCTAPE_WAIT_REPLICAS
        14: lambda bench, reps: several_beats(bench, reps, due=10_000 if quick else 20_000),
    }


def reps_for(figure: int, args: argparse.Namespace) -> int:
    """A figure's repetitions: --reps if given, else 2 with --quick, else its default."""
    if args.reps is not None:
        return int(args.reps)
    return 2 if args.quick else FEWER_REPS.get(figure, NOISY_REPS)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="", help="figures to run, e.g. 4 or 1,2 (7 comes with 4)")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help=f"repetitions of every figure (default {NOISY_REPS}; figures "
        + ", ".join(f"{n}: {k}" for n, k in FEWER_REPS.items())
        + "); medians and min-max are reported",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short pass: 2 repetitions, figure 1 at 1,000 calls, figure 2 at 2,000 jobs, "
        "figure 3 drains 500 jobs, figure 5 stops at 10,000 due, "
        "figure 6 at 5,000 a second",
    )
    parser.add_argument(
        "--drain",
        type=int,
        default=None,
        metavar="N",
        help="figure 3's no-op drain: N jobs (default 1,000; 500 with --quick); its handler-work "
        "curve keeps its sizes",
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="REF",
        help="figure 3 also drains a worker built from git REF (a commit of this checkout; a work "
        "tree of it, removed after), in turn with the others: this checkout's worker against it",
    )
    parser.add_argument(
        "--aof",
        action="store_true",
        help="the private server runs with appendonly yes, appendfsync everysec (results in last-aof.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the results (default bench/results/last.json, last-aof.json with --aof)",
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


def versions(bench: Bench) -> dict[str, str]:
    """Python, the libraries both sides run on, and the server."""
    got = {"python": platform.python_version()}
    got.update({p: version(p) for p in ("celery", "kombu", "redis", "hiredis", "celery-redbeat")})
    got[bench.server_name] = bench.server_version
    return got


def main(argv: list[str] | None = None) -> int:
    """Run the chosen figures and print one table."""
    args = _parse(argv)
    logging.getLogger("beat").setLevel(logging.ERROR)  # the in-process engine's leader chatter
    logging.getLogger("ductape_jobs.runner").setLevel(logging.ERROR)  # figure 9's failing runs
    figures = _figures(args.quick, args.drain, args.against)
    chosen = {4 if int(n) == 7 else int(n) for n in args.only.split(",") if n.strip()}
    # the soak (figure 8, minutes long) runs only when asked for by name
    wanted = sorted(chosen) or sorted(n for n in figures if n not in LONG)
    if args.aof and os.environ.get("REDIS_URL"):
        print("--aof sets up the bench's own server: unset REDIS_URL", file=sys.stderr)
        return 2
    if args.receivers:
        before_task_publish.connect(_heard)
        after_task_publish.connect(_heard)
    started = time.monotonic()
    load_before = os.getloadavg()
    rows: list[Row] = []
    failed: list[str] = []
    wall_s: dict[str, float] = {}
    with Bench.open(aof=args.aof) as bench:
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "server": bench.where,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "versions": versions(bench),
            "reps": {str(n): reps_for(n, args) for n in wanted},
            "quick": args.quick,
            "drain": args.drain,
            "against": args.against,
            "aof": args.aof,
            "receivers": args.receivers,
        }
        print(f"ductape-jobs bench: {meta['server']}, {meta['machine']}, commit {meta['commit']}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
        quick = " (--quick: smaller sizes, see --help)" if args.quick else ""
        heard = "; publish-signal receivers connected" if args.receivers else ""
        aof = "; server AOF on (appendfsync everysec)" if args.aof else ""
        reps = ", ".join(f"{n}: {k}" for n, k in meta["reps"].items())
        print(f"medians and min-max of the repetitions (figure: reps {reps}){quick}{aof}{heard}")
        for n in wanted:
            print(f"  figure {n}{' and 7' if n == 4 else ''} ...", end="", flush=True)
            t0 = time.monotonic()
            try:
                rows += figures[n](bench, reps_for(n, args))
                print(f" {time.monotonic() - t0:.0f} s", flush=True)
            except Exception:
                failed.append(f"figure {n}: {traceback.format_exc()}")
                print(" FAILED", flush=True)
                bench.stop_all()
            wall_s[str(n)] = round(time.monotonic() - t0, 1)
    load_after = os.getloadavg()
    meta.update(
        total_s=round(time.monotonic() - started),
        wall_s=wall_s,
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
    print("Wall time per figure: " + ", ".join(f"{n}: {s:.0f} s" for n, s in wall_s.items()))
    commands = {r.figure.split()[0]: r.command for r in rows if r.command}
    print("One command per figure:", ", ".join(f"{n}: {c}" for n, c in commands.items()))
    for failure in failed:
        print(failure, file=sys.stderr)
    out = args.out or RESULTS / ("last-aof.json" if args.aof else "last.json")
    write_json(out, rows, meta)
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"details: {where} (charts and curve tables: python -m bench.charts --results {where})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
