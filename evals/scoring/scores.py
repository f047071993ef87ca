"""The score table: what an evaluation leaves behind, in the shape every metric reads.

A `ScoreTable` maps checkpoint name -> task name -> `TaskScore`. Get one from the results store
with `evals.scoring.store.Store(path).table(checkpoints, suite)`; build one by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskScore:
    """One checkpoint's score on one task.

    value: the task's headline metric (accuracy, exact match, refusal rate, word perplexity).
    stderr: its standard error as lm-eval reports it, None where lm-eval gives none.
    n: documents scored. chance: the guessing level for multiple choice (1 / choices), else None.
    outcomes: per-document values in document order (0/1 for accuracy and exact match).
    """

    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    chance: float | None
    outcomes: tuple[float, ...]


ScoreTable = dict[str, dict[str, TaskScore]]  # checkpoint name -> task -> score
