"""One chart of the results table: each figure with a numeric goal, measured against that goal.

The chart is drawn from the table in RESULTS.md, the published figures, so that it shows
exactly what the table says (a run with --only keeps the other sections' rows there, not in
RESULTS.json). A row's measure is its ratio to the anchor where the goal is a ratio (`≤ 1.0×`,
`≥ 0.9×`, `p50 ≤ 0.2×`), else its median against the goal's number in the same unit
(`≤ 50 MiB`, `≤ 2 s`, `≤ 1 %`). Plotted is measure ÷ goal on a log axis: the goal is the line at
1, a `≤` goal is met left of it (◀), a `≥` goal right of it (▶); the colour is the table's own
"met" column. Rows whose goal has no number (`passes`, `report the ratio`) are left out and
counted in the title.

`render_chart` needs matplotlib (the `bench` extra); the parsing is pure and tested alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_GOAL = re.compile(r"(≤|≥|<=|>=)\s*(\+?)([0-9][0-9.]*)\s*(×|[^\s,;(]*)")
_VALUES = re.compile(r"^\s*\S+\s*/\s*([0-9.eE+-]+)\s*/\s*\S+\s*(\S*)")
_ANCHOR = re.compile(r"([0-9.eE+-]+)\s*$")
_SCALE = {("KB/s", "bytes/s"): 1000.0, ("ms", "s"): 0.001, ("MB", "bytes"): 1e6}


@dataclass(frozen=True)
class Point:
    name: str
    measure: float   # the ratio (goal in ×) or the median (goal in the figure's unit)
    goal: float
    at_most: bool    # a `≤` goal (else `≥`)
    met: bool
    label: str       # what the row says, for the chart: "0.53× (goal ≥ 0.9×)"

    @property
    def score(self) -> float:
        return self.measure / self.goal


def _cells(line: str) -> list[str] | None:
    if not line.startswith("|") or line.startswith("|---"):
        return None
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells if len(cells) >= 7 else None


def parse_table(markdown: str) -> tuple[list[Point], int]:
    """The chart's points from a results table, and how many rows had no numeric goal."""
    points: list[Point] = []
    skipped = 0
    for line in markdown.splitlines():
        cells = _cells(line)
        if cells is None or cells[0] == "figure":
            continue
        name, values, anchor, ratio, goal, met = cells[:6]
        m = _GOAL.search(goal)
        if m is None or met not in ("yes", "**no**"):
            skipped += 1
            continue
        op, plus, number, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4)
        measure: float | None = None
        shown = ""
        if unit == "×":
            r = re.match(r"([0-9.]+)×", ratio)
            measure = float(r.group(1)) if r else None
            shown = ratio
        else:
            v = _VALUES.match(values)
            if v is not None and unit and unit != v.group(2):
                scale = _SCALE.get((unit, v.group(2)))
                number = number * scale if scale else -1.0  # (a unit this table does not convert: left out)
            if v is not None:
                measure = float(v.group(1))
                shown = f"{v.group(1)} {v.group(2)}"
                a = _ANCHOR.search(anchor)
                if plus:  # a goal over the anchor ("≤ +30 MiB"): the difference is what is measured
                    if a is None:
                        measure = None
                    else:
                        measure = max(measure - float(a.group(1)), number * 0.01)
                        shown = f"+{float(v.group(1)) - float(a.group(1)):.3g} {v.group(2)}"
        if measure is None or number <= 0:
            skipped += 1
            continue
        points.append(Point(name, measure, number, op in ("≤", "<="), met == "yes", f"{shown} (goal {goal})"))
    return points, skipped


def render_chart(markdown: str, out: Path) -> Path:
    """Write the chart of `markdown`'s table to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, skipped = parse_table(markdown)
    points.reverse()  # the table's first row on top
    height = 1.0 + 0.32 * max(len(points), 1)
    fig, ax = plt.subplots(figsize=(12, height))
    for i, p in enumerate(points):
        ax.plot([p.score], [i], marker="<" if p.at_most else ">", markersize=9, linestyle="none",
                color="#2a7d2a" if p.met else "#c0392b")
        label = p.label if len(p.label) <= 48 else p.label[:45] + "…"
        ax.annotate(label, (p.score, i), xytext=(8, -3), textcoords="offset points", fontsize=7)
    ax.axvline(1.0, color="#555555", linewidth=1)
    ax.set_xscale("log")
    lo = min([p.score for p in points] + [0.5])
    hi = max([p.score for p in points] + [2.0])
    ax.set_xlim(lo / 2, hi * 20)
    ax.set_yticks(range(len(points)))
    ax.set_yticklabels([p.name if len(p.name) <= 60 else p.name[:57] + "…" for p in points], fontsize=7)
    ax.set_ylim(-0.7, len(points) - 0.3)
    ax.set_xlabel("measured ÷ goal (log): ◀ a '≤' goal, met left of the line; ▶ a '≥' goal, met right of it")
    met = sum(p.met for p in points)
    ax.set_title(f"bench/RESULTS.md: {met} of {len(points)} numeric goals met (green); "
                 f"{skipped} rows without a numeric goal not drawn", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
