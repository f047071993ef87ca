"""A search's best model against baselines on held-out tasks (tasks the search did not tune on): every
difference tested with the exact McNemar test and the paired bootstrap (evals/analysis/significance.py),
per task and over all the held-out documents pooled (each task's outcomes turned higher-is-better).

A search that scores well only on the documents it tuned on has overfitted them; this is the check.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from evals.analysis.metrics import oriented, task_difference
from evals.analysis.significance import ALPHA, SEED, compare
from evals.report.tables import difference_row
from evals.scoring.scores import ScoreTable
from evals.search.candidates import check_spec, label, merge_spec
from surgery.errors import InputError
from surgery.merge.spec import read_spec_data

POOLED = "all"


def baseline_folders(against: Sequence[str], out: str, models_dir: str | None = None) -> list[str]:
    """Each baseline as a model folder: a merge spec (.yaml) merged into OUT/against/<its name>, a folder as is."""
    folders = []
    for path in against:
        if os.path.isdir(path):
            folders.append(os.path.abspath(path))
        else:  # a merge spec (check_baselines refused anything else)
            name = os.path.splitext(os.path.basename(path))[0]
            folders.append(merge_spec(read_spec_data(path), path, os.path.join(out, "against", name), models_dir))
    return folders


def check_baselines(against: Sequence[str], models_dir: str | None = None) -> None:
    """Every baseline a folder, or a merge spec the engine plans (nothing read or written), before the search."""
    for path in against:
        if os.path.isdir(path):
            continue
        if not path.endswith((".yaml", ".yml")):
            raise InputError(f"--against {path!r} is neither a model folder nor a merge spec (.yaml); give one of them")
        check_spec(read_spec_data(path), path, models_dir)


def heldout_rows(table: ScoreTable, best: str, baselines: Sequence[str], tasks: Sequence[str],
                 alpha: float = ALPHA, seed: int = SEED) -> list[dict]:
    """One row per (baseline, task) and a pooled row per baseline: both scores, best - baseline, its
    bootstrap interval, McNemar's p and the verdict (significant only when both tests agree)."""
    rows = []
    for base in baselines:
        for task in tasks:
            b, a = table[base][task], table[best][task]
            d = task_difference(b, a, normalise=False, alpha=alpha, seed=seed)
            rows.append(_row(base, task, oriented(a).value, oriented(b).value, d))
        before = [o for t in tasks for o in oriented(table[base][t]).outcomes]
        after = [o for t in tasks for o in oriented(table[best][t]).outcomes]
        mean_b, mean_a = sum(before) / len(before), sum(after) / len(after)
        rows.append(_row(base, POOLED, mean_a, mean_b, compare(before, after, mean_a - mean_b, alpha=alpha, seed=seed)))
    return rows


def _row(baseline: str, task: str, best: float, other: float, d) -> dict:
    row = difference_row(task, d, baseline=label(baseline))
    return {"baseline": row.pop("baseline"), "task": row.pop("task"), "best": best, "baseline score": other} | row


def check_heldout(tasks: Sequence[str], tuned: Sequence[str]) -> None:
    """Held-out tasks must not be tuned ones: that comparison would say nothing about generalisation."""
    both = [t for t in tasks if t in tuned]
    if both:
        raise InputError(f"--heldout {', '.join(both)}: the search tunes on these; hold out other tasks "
                         "(e.g. the test split of the task whose dev split is tuned on)")
