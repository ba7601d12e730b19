"""Figures and their anchors: min / median / max over repeated runs, the ratio, the goal."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float]
    anchor_name: str = "—"
    anchor: list[float] = field(default_factory=list)
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def anchor_median(self) -> float | None:
        return statistics.median(self.anchor) if self.anchor else None

    @property
    def ratio(self) -> float | None:
        a = self.anchor_median
        return self.median / a if a else None

    def row(self) -> str:
        def f(v: float) -> str:
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"

        vals = f"{f(min(self.values))} / {f(self.median)} / {f(max(self.values))}" if self.values else "—"
        anchor = f"{self.anchor_name}: {f(self.anchor_median)}" if self.anchor_median is not None else self.anchor_name
        ratio = f"{self.ratio:.2f}×" if self.ratio is not None else "—"
        met = "—" if self.met is None else ("yes" if self.met else "**no**")
        return f"| {self.name} | {vals} {self.unit} | {anchor} | {ratio} | {self.goal} | {met} | {self.note} |"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "values": self.values, "anchor_name": self.anchor_name,
                "anchor": self.anchor, "goal": self.goal, "met": self.met, "note": self.note}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Figure:
        return cls(**d)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]
