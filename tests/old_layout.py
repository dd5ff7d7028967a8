"""Job records in the layout before jobfields.py (``spec`` and ``brief`` JSON fields), written
over a job scheduled today, for the tests that old records are still read and upgraded."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ductape_jobs import jobfields


def to_old_layout(r: Any, key: str, *, brief: bool = True) -> dict[str, str]:
    """Rewrite job hash ``key`` as the old layout wrote it (without ``brief`` for a record older
    than briefs); returns the old fields written."""
    found = jobfields.fields(r.hgetall(key))
    old = {
        jobfields.LEGACY_SPEC: json.dumps(dataclasses.asdict(jobfields.spec_of(found)), separators=(",", ":"))
    }
    if brief:
        old[jobfields.LEGACY_BRIEF] = json.dumps(
            dataclasses.asdict(jobfields.brief_of(found)), separators=(",", ":")
        )
    r.hdel(key, *[name for name in jobfields.ALL if name in found])
    r.hset(key, mapping={**old, "attempts": found.get("attempts", "0"), "idem": found.get("idem", "")})
    return old
