"""Every stored run placed at (alignment, general capability): the alignment suite's and the general
suite's G (evals.analysis.metrics.general_capability), for the runs scored on both; the Pareto front is
evals.analysis.metrics.pareto_front over these points."""

from __future__ import annotations

from evals.analysis.metrics import Suite, general_capability
from evals.scoring.scores import ScoreTable
from surgery.errors import InputError


def pareto_points(table: ScoreTable, general: Suite,
                  alignment: Suite) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """({run: (alignment G, general G)}, the runs left out because a suite's task was not scored on them)."""
    points, skipped = {}, []
    for name, scores in table.items():
        try:
            points[name] = (general_capability(scores, alignment), general_capability(scores, general))
        except InputError:  # a task of either suite not evaluated on this run
            skipped.append(name)
    return points, skipped
