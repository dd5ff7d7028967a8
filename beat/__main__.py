"""``ductape-beat`` (also ``python -m beat``): beat, without Celery's command line.

The same beat as ``celery -A beat beat``: Celery's own ``app.Beat`` runs it, with its logging,
pid file and signal handling (SIGTERM and SIGINT stop it, releasing the lock). What it leaves
out is ``celery``'s command line, which loads its REPL and every installed Celery plugin (Flower's
web server among them): about 15 MB a process (bench figure 5). Settings come from the
environment, as for every process; a bad one is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ductape_jobs.errors import DuctapeError


def main(argv: Sequence[str] | None = None) -> None:
    """Run beat until it is stopped."""
    parser = argparse.ArgumentParser(
        prog="ductape-beat",
        description="Release due runs from Redis (the same beat as `celery -A beat beat`). "
        "Settings: REDIS_URL and DUCTAPE_* in the environment.",
    )
    parser.add_argument("-l", "--loglevel", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    parser.add_argument("-f", "--logfile", help="log here instead of stderr")
    parser.add_argument("--pidfile", help="write the process id here; refuse to start if it is held")
    args = parser.parse_args(argv)
    try:
        from beat.celery import app  # the settings are read (and checked) here
    except DuctapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    app.Beat(loglevel=args.loglevel, logfile=args.logfile, pidfile=args.pidfile).run()


if __name__ == "__main__":
    main()
