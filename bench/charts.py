"""``python -m bench.charts [--results PATH] [--out DIR]``: draw every curve of a bench run as a PNG
(ours and theirs, the median with the repetitions' min-max as a band) and print each as a
Markdown table. ``make bench`` runs it after the bench, from ``bench/results/last.json`` into
``docs/bench/`` (the charts the README shows).

A curve is the rows of a results file that carry a ``Point`` with the same ``chart``; each
``panel`` of it is one plot, x by y, one line per side. Figures add curves by returning such rows.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench.env import RESULTS, ROOT
from bench.report import Row, ratio_text, read_json, spread, with_spread

CHARTS = ROOT / "docs" / "bench"


def curves(rows: list[Row]) -> dict[str, dict[str, list[Row]]]:
    """Rows on curves, by chart then panel, each panel's rows in x order."""
    got: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.point is not None:
            got[r.point.chart][r.point.panel].append(r)
    for panels in got.values():
        for points in panels.values():
            points.sort(key=lambda r: r.point.x if r.point else 0)
    return got


def slug(chart: str) -> str:
    """A file name stem for a chart title: ``6 beat lateness by rate`` -> ``6-beat-lateness-by-rate``."""
    return re.sub(r"[^a-z0-9]+", "-", chart.lower()).strip("-")


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def draw(rows: list[Row], out: Path, subtitle: str = "") -> list[Path]:
    """One PNG per chart under ``out``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chart, panels in curves(rows).items():
        fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.2 * len(panels)), 3.4), squeeze=False)
        for ax, (panel, points) in zip(axes[0], panels.items(), strict=True):
            xs = [r.point.x for r in points if r.point]
            theirs_label = next((r.theirs_label for r in points if r.theirs_label), "theirs")
            for side, label, style in (("ours", "ductape-jobs", "o-"), ("theirs", theirs_label, "s--")):
                med = [r.ours if side == "ours" else r.theirs for r in points]
                if not _finite(med):
                    continue
                lows, highs = zip(*(spread(r.samples.get(side, [])) for r in points), strict=True)
                (line,) = ax.plot(xs, med, style, label=label, markersize=4)
                ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
                # a value projected rather than measured (row.details["projected"] names the side)
                guessed = [
                    (x, y)
                    for x, y, r in zip(xs, med, points, strict=True)
                    if side in r.details.get("projected", [])
                ]
                if guessed:
                    gx, gy = zip(*guessed, strict=True)
                    ax.plot(
                        gx,
                        gy,
                        style[0],
                        markersize=8,
                        markerfacecolor="white",
                        color=line.get_color(),
                        label=f"{label}, projected",
                    )
            names = [r.point.x_name for r in points if r.point]
            if any(names):
                ax.set_xticks(xs, names)
            elif min(xs) > 0 and max(xs) / min(xs) >= 50:
                ax.set_xscale("log")
            ys = _finite([v for r in points for side in ("ours", "theirs") for v in r.samples.get(side, [])])
            if ys and min(ys) > 0 and max(ys) / min(ys) >= 50:
                ax.set_yscale("log")
            ax.set_xlabel(points[0].point.x_label if points[0].point else "")
            ax.set_title(panel, fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(chart + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
        fig.tight_layout()
        path = out / f"{slug(chart)}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def tables(rows: list[Row]) -> str:
    """Each curve as a Markdown table: x | ours | theirs | ratio, one per panel."""
    parts = []
    for chart, panels in curves(rows).items():
        for panel, points in panels.items():
            theirs_label = next((r.theirs_label for r in points if r.theirs_label), "theirs")
            x_label = points[0].point.x_label if points[0].point else "x"
            lines = [
                f"{chart}: {panel} (median (min-max))",
                "",
                f"| {x_label} | ours | {theirs_label} | ratio (min-max) |",
                "|---:|---:|---:|---:|",
            ]
            for r in points:
                x = (r.point.x_name or f"{r.point.x:,g}") if r.point else "-"
                ours = with_spread(r.ours, r.samples.get("ours", []))
                theirs = with_spread(r.theirs, r.samples.get("theirs", []))
                lines.append(f"| {x} | {ours} | {theirs} | {ratio_text(r)} |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Draw the charts of a results file and print its curves as tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS / "last.json")
    parser.add_argument("--out", type=Path, default=CHARTS)
    args = parser.parse_args(argv)
    meta, rows = read_json(args.results)
    subtitle = f"commit {meta.get('commit', '?')}, {meta.get('when', '?')}"
    if meta.get("aof"):
        subtitle += ", AOF everysec"
    paths = draw(rows, args.out, subtitle)
    print(tables(rows))
    print()
    for path in paths:
        print(f"chart: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if not paths:
        print(f"no curves in {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
