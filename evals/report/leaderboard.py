"""The leaderboard: one row per stored checkpoint with its lineage and its scores, sorted, rendered
as a plain table, Markdown, CSV or JSON."""

from __future__ import annotations

import json
import os

from evals.analysis.metrics import oriented
from evals.report import tables
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store
from surgery.errors import InputError

FORMATS = (*tables.FORMATS, "json")
PERPLEXITIES = ("perplexity", "bits_per_byte")  # lower is better, and not on a 0-1 scale: kept out of the mean


def rows(store: Store, suite: str | None = None, key: str | None = None) -> tuple[list[dict], list[str]]:
    """One dict per checkpoint (name, hash, lineage columns, `mean`, then one column per task), and the
    checkpoints left out because their folder changed since they were evaluated."""
    out, changed = [], []
    for name in store.names():
        try:
            scores = store.table([name], suite, key)[name]
        except InputError:  # rewritten since: its scores would be stale
            changed.append(name)
            continue
        if scores:
            hash = store.hash_of(name)
            row = {"checkpoint": short_path(name), "hash": hash[:12], **lineage_columns(store.lineage(hash)),
                   "mean": mean_score(scores)}
            out.append(row | {task: s.value for task, s in sorted(scores.items())})
    return out, changed


def lineage_columns(lineage: dict) -> dict:
    """`made_by` (training method and objective, or merge method) and `parent` (what it was made from)."""
    training, merge = lineage.get("training") or {}, lineage.get("merge") or {}
    if training:
        made_by = "/".join(str((training.get(k) or {}).get("name", "")) for k in ("method", "objective"))
        parent = short_path(training.get("parent") or training.get("base") or "")
    elif merge:  # a candidate of `surgery evolve` says so, so the leaderboard shows the search
        kind = "evolve" if lineage.get("evolve") else "merge"
        made_by, parent = f"{kind}:{merge.get('surgery.method', '?')}", merged_from(merge.get("surgery.models", ""))
    else:
        made_by, parent = "", ""
    if lineage.get("adapter_of"):
        parent = parent or short_path(lineage["adapter_of"])
    return {"made_by": made_by, "parent": parent}


def merged_from(models: str) -> str:
    """The engine's `surgery.models` ('name=/path,name=/path') as the input folders, each shortened."""
    paths = [item.split("=", 1)[-1] for item in models.split(",") if item]
    return " + ".join(short_path(p) for p in paths)


def mean_score(scores: dict[str, TaskScore]) -> float | None:
    """Mean of the scores turned so that higher is better (over-refusal r counts as 1 - r); perplexities left out."""
    values = [oriented(s).value for s in scores.values() if not any(p in s.metric for p in PERPLEXITIES)]
    return sum(values) / len(values) if values else None


def sort_rows(table: list[dict], column: str) -> list[dict]:
    """Numbers high to low (missing last), text A to Z; an unknown column is an error naming the columns."""
    columns = {c for r in table for c in r}
    if table and column not in columns:
        raise InputError(f"no column {column!r} to sort by; the columns are {', '.join(sorted(columns))}")
    numeric = any(isinstance(r.get(column), (int, float)) for r in table)
    if numeric:
        return sorted(table, key=lambda r: (r.get(column) is None, -(r.get(column) or 0)))
    return sorted(table, key=lambda r: str(r.get(column, "")))


def render(table: list[dict], fmt: str) -> str:
    """The rows as JSON, or as the evals' one table renderer draws them (terminal text, Markdown, CSV)."""
    if fmt == "json":
        return json.dumps(table, indent=2)
    return tables.render(table, fmt)


def short_path(path: str) -> str:
    """A path under the current folder, relative to it; others as they are."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel
