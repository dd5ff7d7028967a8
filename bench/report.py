"""Figures as rows: medians over repetitions, ratios (ours / theirs), the table and last.json."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def median(values: Sequence[float]) -> float:
    """The median of the repetitions (NaN when there are none)."""
    return statistics.median(values) if values else math.nan


@dataclass
class Row:
    """One line of the table: a figure, both sides' medians, the ratio and the target."""

    figure: str
    unit: str
    ours: float
    theirs: float
    target: str
    met: bool | None  # None: informative row, no target of its own
    theirs_label: str = ""
    ratio: float = math.nan
    samples: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    ratio_spread: tuple[float, float] = (math.nan, math.nan)  # min and max of the per-rep ratios

    def __post_init__(self) -> None:
        if math.isnan(self.ratio) and self.theirs:
            self.ratio = self.ours / self.theirs


def row(
    figure: str,
    unit: str,
    ours: Sequence[float],
    theirs: Sequence[float],
    target: str,
    check: Callable[[float, float, float], bool] | None,
    **extra: Any,
) -> Row:
    """A row from per-repetition samples; ``check(ours, theirs, ratio)`` decides 'met?'."""
    o, t = median(ours), median(theirs)
    ratio = o / t if t else math.nan
    met = None if check is None else bool(check(o, t, ratio))
    # Both sides run in the same repetition, alternating who goes first: pair them up.
    paired = [a / b for a, b in zip(ours, theirs, strict=False) if b] if len(ours) == len(theirs) else []
    return Row(
        figure,
        unit,
        o,
        t,
        target,
        met,
        ratio=ratio,
        ratio_spread=(min(paired), max(paired)) if paired else (math.nan, math.nan),
        samples={"ours": list(ours), "theirs": list(theirs)},
        **extra,
    )


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: figure | ours | theirs | ratio (min-max of the repetitions'
    own ratios) | target | met?."""
    lines = ["| figure | ours | theirs | ratio (min-max) | target | met? |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        theirs = _fmt(r.theirs) + (f" ({r.theirs_label})" if r.theirs_label else "")
        lo, hi = r.ratio_spread
        ratio = _fmt(r.ratio) + ("" if math.isnan(lo) else f" ({_fmt(lo)}-{_fmt(hi)})")
        lines.append(f"| {r.figure}, {r.unit} | {_fmt(r.ours)} | {theirs} | {ratio} | {r.target} | {met} |")
    return "\n".join(lines)


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    """Everything measured, for later comparison (bench/results is gitignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"meta": meta, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(blob, indent=2, default=str, allow_nan=True) + "\n")
