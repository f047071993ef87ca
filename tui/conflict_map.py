"""`surgery diff`'s interference summary drawn in the terminal: the share of sign conflicts (what TIES
resolves) per layer and module type as colored blocks, and each pair's cosine over the whole model.
The numbers are `surgery.diagnose.diff`'s and `surgery.diagnose.diff_report.grids`'s; this only colors them."""

from __future__ import annotations

import math

from rich.text import Text

from surgery.diagnose.diff import Diff
from surgery.diagnose.diff_report import grids

RAMP = ("#1d4877", "#1b8a5a", "#8bb33a", "#fbb021", "#f68838", "#ee3e32")  # low -> high
CELL = "██"


def color(value: float, lo: float, hi: float) -> str:
    share = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    return RAMP[min(len(RAMP) - 1, max(0, int(share * len(RAMP))))]


def measure(d: Diff) -> str:
    """The column drawn: sign conflicts when there are two models or more, else the first model's change."""
    cols = d.columns()
    return "sign conflicts" if "sign conflicts" in cols else cols[0]


def conflict_map(d: Diff) -> Text:
    rows, types, panels = grids(d)
    title = measure(d)
    values = panels[title]
    finite = [v for row in values for v in row if not math.isnan(v)]
    lo, hi = (0.0, 1.0) if title == "sign conflicts" else (min(finite, default=0.0), max(finite, default=1.0))
    width = max(len(r) for r in rows)
    out = Text(f"{title} (layer x module type)\n", style="bold")
    out.append(" " * (width + 1) + " ".join(t[:2].ljust(2) for t in types) + "\n", style="dim")
    for label, row in zip(rows, values):
        out.append(label.rjust(width) + " ")
        for v in row:
            out.append(CELL + " " if not math.isnan(v) else "   ", style=color(v, lo, hi) if not math.isnan(v) else "")
        out.append("\n")
    out.append(_legend(lo, hi))
    for name, value in d.metrics(d.total()).items():
        out.append(f"\n{name}: " + ("-" if value is None else f"{value:.3f}"))
    return out


def _legend(lo: float, hi: float) -> Text:
    legend = Text(f"{lo:.2g} ")
    for c in RAMP:
        legend.append("█", style=c)
    return legend + Text(f" {hi:.2g}")
