"""The dataset card written beside generated data: `card.json` (what made it, the counts, the sha256 of
each data file) and `card.md` (the same for a person), and the length histogram as a PNG.

`card.json`'s `lineage` is what a training run on one of its files records in each checkpoint's
lineage.json (trainers/checkpoint.py `lineage`, through `provenance`): the generator, its spec and
inputs (a constitution's sha256 and principle ids, say). It is trusted only for a file whose sha256
the card lists, so an edited file is not attributed to the generator.
"""

from __future__ import annotations

import hashlib
import json
import os

from surgery.io.output import write_json

CARD = "card.json"


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write(folder: str, card: dict, markdown: str) -> None:
    """card.json and card.md into `folder` (an output folder being written atomically); the card's
    `files` get the sha256 of the data files it names."""
    card = {**card, "files": {name: sha256(os.path.join(folder, name)) for name in card.get("files", [])}}
    write_json(os.path.join(folder, CARD), card)
    with open(os.path.join(folder, "card.md"), "w") as f:
        f.write(markdown)


def provenance(path: str, digest: str) -> dict | None:
    """The `lineage` of the card beside data file `path` when the card lists the file with this sha256."""
    card = os.path.join(os.path.dirname(os.path.abspath(path)), CARD)
    if not os.path.isfile(card):
        return None
    try:
        with open(card) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    listed = found.get("files", {}) if isinstance(found, dict) else {}
    return found.get("lineage") if listed.get(os.path.basename(path)) == digest else None


def table(rows: list[list], head: list[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def histogram(path: str, series: dict[str, list[int]], xlabel: str, title: str) -> None:
    """One panel per series: counts of each length (in words), drawn on matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from surgery.diagnose.heatmap import save_png

    fig = Figure(figsize=(4.2 * len(series), 3.2))
    FigureCanvasAgg(fig)
    for k, (name, values) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(series), k + 1)
        ax.hist(values or [0], bins=min(30, max(5, len(set(values)))), color="tab:blue", edgecolor="white")
        ax.set_title(f"{name} ({len(values)})", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("count", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
