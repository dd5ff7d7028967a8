"""Figures as rows: medians over repetitions, ratios (ours / theirs), the table and last.json.

A figure returns rows. A row that is one point of a curve carries a ``Point`` (which chart, which
panel, the x value): ``python -m bench.charts`` draws every chart from ``last.json`` and prints
each curve as a table, so a new sweep needs nothing beyond its rows.
"""

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


@dataclass(frozen=True)
class Point:
    """Where a row sits on a curve: the chart (one PNG), the panel in it, and the x value."""

    chart: str  # file name stem and title, e.g. "6 beat lateness by schedules due per second"
    panel: str  # e.g. "lateness p99, ms"
    x: float
    x_label: str  # e.g. "schedules due per second"
    x_name: str = ""  # a category's name (x then only orders the points), e.g. "1 ms CPU"


def spread(values: Sequence[float]) -> tuple[float, float]:
    """The lowest and highest repetition (NaN when there are none)."""
    finite = [v for v in values if not math.isnan(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


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
    point: Point | None = None  # set when the row is one point of a curve (bench.charts)

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
    paired = [r for r in paired if not math.isnan(r)]  # a repetition with nothing measured on a side
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
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "-"
    if abs(value) >= 999.5:  # what rounds to 1,000 prints as 1,000, not 1000
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def with_spread(median_value: float, samples: Sequence[float]) -> str:
    """``median (min-max)``; the bracket is left out for a single repetition."""
    lo, hi = spread(samples)
    if len(samples) < 2 or math.isnan(lo):
        return _fmt(median_value)
    return f"{_fmt(median_value)} ({_fmt(lo)}-{_fmt(hi)})"


def ratio_text(r: Row) -> str:
    """The ratio of the medians, with the min-max of the repetitions' own ratios."""
    lo, hi = r.ratio_spread
    return _fmt(r.ratio) + ("" if math.isnan(lo) or lo == hi else f" ({_fmt(lo)}-{_fmt(hi)})")


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: figure | ours | theirs | ratio | target | met?, each number the
    median of the repetitions with their min-max in brackets (for the ratio: of the repetitions'
    own ratios)."""
    lines = [
        "| figure | ours, median (min-max) | theirs, median (min-max) | ratio (min-max) | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        ours = with_spread(r.ours, r.samples.get("ours", []))
        theirs = with_spread(r.theirs, r.samples.get("theirs", []))
        theirs += f" ({r.theirs_label})" if r.theirs_label else ""
        lines.append(f"| {r.figure}, {r.unit} | {ours} | {theirs} | {ratio_text(r)} | {r.target} | {met} |")
    return "\n".join(lines)


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    """Everything measured, for later comparison (bench/results is gitignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"meta": meta, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(blob, indent=2, default=str, allow_nan=True) + "\n")


def read_json(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """``meta`` and the rows of a results file written by ``write_json``."""
    blob = json.loads(path.read_text())
    rows = []
    for raw in blob["rows"]:
        point = raw.pop("point", None)
        raw["ratio_spread"] = tuple(raw.get("ratio_spread", (math.nan, math.nan)))
        rows.append(Row(**raw, point=Point(**point) if point else None))
    return blob["meta"], rows
