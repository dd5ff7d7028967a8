"""Where both no-op tasks count completed runs. Imports nothing of ours, so the plain Celery app
that imports it loads no more than a plain Celery app would (its memory is a bench figure)."""

from __future__ import annotations


def counter_key(prefix: str) -> str:
    """Where both no-op tasks count completed runs, under the run's key prefix."""
    return f"{prefix}:bench:count"
