"""The wall clock: read only at the edges (the clients, the worker, beat, the CLI) and passed in."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The wall clock in epoch ms."""
    return time.time_ns() // 1_000_000
