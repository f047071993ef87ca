"""Two checkpoints side by side: each task both were scored on, the difference B - A (as stored: its sign
follows its label), which of the two is better (lower is better for a perplexity), and whether that is
more than noise (evals.analysis.metrics.task_difference: exact McNemar and the paired bootstrap over the
stored per-document outcomes). Scores evaluated differently are refused, as `surgery tax` refuses them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from evals.analysis.metrics import oriented, task_difference
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
        """One row per task: A, B, B - A with its interval, which is better, and the tests' verdict.
        The tests run on scores turned so that higher is better (evals' `oriented`); where lower is better,
        the difference and its interval are turned back, so that B - A is what the two columns show."""
        return [_row(task, a, b, self.differences[task]) for task, (a, b) in self.scores.items()]

    def lower_is_better(self) -> list[str]:
        return [task for task, (a, _) in self.scores.items() if oriented(a).metric != a.metric]


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


def _row(task: str, a: TaskScore, b: TaskScore, d: Difference) -> dict:
    sign = -1 if oriented(a).metric != a.metric else 1  # the gain d.delta is -(B - A) where lower is better
    tested = difference_row(task, d)
    interval = "-" if d.low is None else "[{:+.4g}, {:+.4g}]".format(*sorted((sign * d.low, sign * d.high)))
    better = "B" if d.delta > 0 else "A" if d.delta < 0 else "neither"
    return {"task": task, "A": a.value, "B": b.value, "B - A": sign * d.delta, f"{1 - d.alpha:.0%} CI": interval,
            "p": tested["p (McNemar)"], "better": better, "verdict": tested["verdict"]}
