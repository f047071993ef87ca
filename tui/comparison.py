"""Two checkpoints side by side: each task both were scored on, the difference B - A and whether it is
more than noise (evals.analysis.metrics.task_difference: exact McNemar and the paired bootstrap over the
stored per-document outcomes). Scores evaluated differently are refused, as `surgery tax` refuses them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from evals.analysis.metrics import task_difference
from evals.analysis.significance import Difference
from evals.report.tables import difference_row
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store
from surgery.errors import InputError


@dataclass(frozen=True)
class Comparison:
    """`a` is the checkpoint before, `b` the one after; `error` says why nothing was compared."""

    a: str
    b: str
    scores: dict[str, tuple[TaskScore, TaskScore]] = field(default_factory=dict)
    differences: dict[str, Difference] = field(default_factory=dict)
    error: str = ""

    def table(self) -> list[dict]:
        """One row per task: A, B, then the difference as the evals reports print it."""
        return [{"task": task, "A": a.value, "B": b.value, **_tested(difference_row(task, self.differences[task]))}
                for task, (a, b) in self.scores.items()]


def compare_checkpoints(db_path: str, a: str, b: str) -> Comparison:
    """Raw scores (not chance-corrected), oriented so that a positive difference is a gain."""
    try:
        with Store(db_path) as store:
            table = store.comparable_table([a, b])
        tasks = [t for t in table[a] if t in table[b]]
        if not tasks:
            raise InputError("the two checkpoints have no task in common; evaluate them on the same tasks")
        differences = {t: task_difference(table[a][t], table[b][t], normalise=False) for t in tasks}
    except (InputError, sqlite3.Error) as e:
        return Comparison(a, b, error=str(e))
    return Comparison(a, b, {t: (table[a][t], table[b][t]) for t in tasks}, differences)


def _tested(row: dict) -> dict:
    """difference_row without its task column."""
    return {k: v for k, v in row.items() if k != "task"}
