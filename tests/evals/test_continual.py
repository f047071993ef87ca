"""GEM's ACC, BWT and FWT and RWalk's forgetting and intransigence on a matrix worked out by hand, and
the forgetting report built from a score table.

R (rows: after stage 0, 1, 2; columns: tasks 0, 1, 2), baseline b, joint reference a*:

          t0    t1    t2
    s0  0.80  0.10  0.20
    s1  0.85  0.90  0.30
    s2  0.50  0.70  0.95          b = 0.10 0.05 0.10      a* = 0.90 0.95 0.90

ACC = (0.50 + 0.70 + 0.95)/3 = 0.71667
BWT = ((0.50 - 0.80) + (0.70 - 0.90))/2 = -0.25
FWT = ((0.10 - 0.05) + (0.30 - 0.10))/2 = 0.125
forgetting at s2: f0 = max(0.80, 0.85) - 0.50 = 0.35, f1 = max(0.10, 0.90) - 0.70 = 0.20 -> 0.275
  (t0 peaked after s1, so forgetting counts more than BWT's -0.25 does); at s1: f0 = 0.80 - 0.85 = -0.05
intransigence: I = (0.90 - 0.80, 0.95 - 0.90, 0.90 - 0.95) = (0.10, 0.05, -0.05) -> 0.1/3 = 0.03333
"""

from __future__ import annotations

import numpy as np
import pytest

from evals.analysis.continual import (
    average_accuracy,
    backward_transfer,
    drop_from_best,
    forgetting,
    forgetting_report,
    forward_transfer,
    intransigence,
    task_forgetting,
    task_intransigence,
)
from evals.report.tables import forgetting_line, render_forgetting
from evals.scoring.scores import TaskScore
from surgery.errors import InputError

R = [[0.80, 0.10, 0.20], [0.85, 0.90, 0.30], [0.50, 0.70, 0.95]]
B = [0.10, 0.05, 0.10]
JOINT = [0.90, 0.95, 0.90]


def test_gem_by_hand():
    assert average_accuracy(R) == pytest.approx(2.15 / 3)
    assert backward_transfer(R) == pytest.approx(-0.25)
    assert forward_transfer(R, B) == pytest.approx(0.125)


def test_rwalk_by_hand():
    assert task_forgetting(R) == pytest.approx([0.35, 0.20])
    assert forgetting(R) == pytest.approx(0.275)
    assert forgetting(R, k=1) == pytest.approx(-0.05)
    assert task_intransigence(R, JOINT) == pytest.approx([0.10, 0.05, -0.05])
    assert intransigence(R, JOINT) == pytest.approx(0.1 / 3)


def test_drop_from_best_covers_every_task():
    """For tasks not trained in any stage too: t2's best before s2 is 0.30, and it rose by 0.65."""
    assert drop_from_best(R) == pytest.approx([0.35, 0.20, -0.65])


def test_shapes_are_checked():
    with pytest.raises(InputError, match="one task per stage"):
        backward_transfer([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    with pytest.raises(InputError, match="at least 2"):
        backward_transfer([[0.5]])
    with pytest.raises(InputError, match="ragged"):
        average_accuracy([[0.1, 0.2], [0.3]])
    with pytest.raises(InputError, match="one per task"):
        forward_transfer(R, [0.1, 0.2])
    with pytest.raises(InputError, match="non-finite"):
        average_accuracy([[float("nan")]])


def _score(task: str, value: float, n: int = 20) -> TaskScore:
    """value * n documents right, the first ones: nested, so a drop from 17 to 10 is 7 losses, no wins."""
    right = round(value * n)
    return TaskScore(task, "acc", right / n, None, n, None, tuple(1.0 if i < right else 0.0 for i in range(n)))


def _table() -> dict[str, dict[str, TaskScore]]:
    """base = b, s1..s3 = R's rows; a bystander task `capital` evaluated on every checkpoint."""
    rows = {"base": B, "s1": R[0], "s2": R[1], "s3": R[2]}
    bystander = {"base": 0.9, "s1": 0.9, "s2": 0.85, "s3": 0.85}
    return {c: {**{t: _score(t, v) for t, v in zip(("t0", "t1", "t2"), values)},
                "capital": _score("capital", bystander[c])} for c, values in rows.items()}


def test_forgetting_report_from_a_table():
    """t0: best earlier 0.85 at s2, last 0.50: 7 losses of 20, McNemar p = 2/128, interval below 0.
    capital: 0.90 -> 0.85 is one document: noise."""
    report = forgetting_report(_table(), ["base", "s1", "s2", "s3"], stage_tasks=["t0", "t1", "t2"],
                               joint={t: _score(t, v) for t, v in zip(("t0", "t1", "t2"), JOINT)}, resamples=500)
    assert report.tasks == ["t0", "t1", "t2", "capital"]
    assert report.matrix.shape == (4, 4) and report.matrix[0] == pytest.approx(B + [0.9])
    assert report.best["t0"] == "s2" and report.drops["t0"].delta == pytest.approx(-0.35)
    assert report.drops["t0"].p_value == pytest.approx(2 / 128) and report.drops["t0"].significant
    assert report.best["capital"] == "base" and not report.drops["capital"].significant
    assert report.average_accuracy == pytest.approx(2.15 / 3)
    assert report.backward_transfer == pytest.approx(-0.25)
    assert report.forward_transfer == pytest.approx(0.125)
    assert report.forgetting == pytest.approx(0.275)
    assert report.intransigence == pytest.approx(0.1 / 3)
    assert set(report.backward) == {"t0", "t1"} and report.backward["t0"].delta == pytest.approx(-0.3)
    text = render_forgetting(report)
    assert "BWT -0.2500, FWT +0.1250 (GEM, denominator T-1)" in text
    assert "forgetting +0.2750 (RWalk, denominator T-1)" in text


def test_forgetting_line_by_hand():
    """R's diagonal (0.80, 0.90) against its last row (0.50, 0.70): t0 and t1 after their own stage and
    after the last; BWT (-0.3 - 0.2) / 2 = -0.25, forgetting (0.35 + 0.2) / 2 = 0.275 (RWalk: from the best)."""
    report = forgetting_report(_table(), ["base", "s1", "s2", "s3"], stage_tasks=["t0", "t1", "t2"], resamples=200)
    line = forgetting_line(report)
    assert line.startswith("forgetting along base -> s1 -> s2 -> s3: t0 0.800 after its stage, 0.500 after the last")
    assert "t1 0.900 after its stage, 0.700 after the last" in line
    assert line.endswith("BWT -0.250 (GEM), forgetting +0.275 (RWalk)") and "\n" not in line
    with pytest.raises(InputError, match="stage_tasks"):
        forgetting_line(forgetting_report(_table(), ["base", "s3"], resamples=200))


def test_forgetting_report_without_stage_tasks():
    report = forgetting_report(_table(), ["base", "s3"], resamples=200)
    assert report.stage_tasks is None and report.backward_transfer is None
    assert report.drops["t2"].delta == pytest.approx(0.85)
    assert "ACC" not in render_forgetting(report)


def test_forgetting_report_refuses_what_cannot_be_computed():
    table = _table()
    with pytest.raises(InputError, match="at least two checkpoints"):
        forgetting_report(table, ["base"])
    with pytest.raises(InputError, match="no scores for nope"):
        forgetting_report(table, ["base", "nope"])
    with pytest.raises(InputError, match="2 stage tasks for 3 stages"):
        forgetting_report(table, ["base", "s1", "s2", "s3"], stage_tasks=["t0", "t1"])
    with pytest.raises(InputError, match="joint reference has no score for t1, t2"):
        forgetting_report(table, ["base", "s1", "s2", "s3"], stage_tasks=["t0", "t1", "t2"],
                          joint={"t0": _score("t0", 0.9)})
    assert np.isfinite(forgetting_report(table, ["base", "s1", "s2", "s3"], stage_tasks=["t0", "t1", "t2"],
                                         resamples=100).forgetting)


def _outcomes(task: str, right: int, n: int = 10) -> TaskScore:
    outcomes = tuple(1.0 if i < right else 0.0 for i in range(n))
    return TaskScore(task, "exact_match", right / n, None, n, None, outcomes)


def _rows(matrix: list[list[int]]) -> list[dict[str, TaskScore]]:
    """Documents right (of 10) after each stage, for tasks t0, t1, t2."""
    return [{t: _outcomes(t, r) for t, r in zip(("t0", "t1", "t2"), row)} for row in matrix]


def test_strategies_compared_document_by_document():
    """naive forgets all of t0 (10 -> 0) and keeps t1; the other keeps both, but learns t1 on 8 documents
    instead of 10. BWT per document: naive t0 -1 each, t1 0; other 0 and 0. BWT(other) - BWT(naive) =
    (1 + 0) / 2 = 0.5, with 10 wins and no loss: sign test p = 2 / 2^10. New stages: t1 8 vs 10, t2 10 vs 10:
    (-0.2 + 0) / 2 = -0.1, two losses: p = 0.5, noise."""
    from evals.analysis.continual import backward_difference, new_stage_difference

    naive = _rows([[10, 0, 0], [3, 10, 0], [0, 10, 10]])
    other = _rows([[10, 0, 0], [10, 8, 0], [10, 8, 10]])
    kept = backward_difference(naive, other, ["t0", "t1", "t2"])
    assert kept.delta == pytest.approx(0.5) and (kept.wins, kept.losses) == (10, 0)
    assert kept.p_value == pytest.approx(2 / 2 ** 10) and kept.significant and kept.low > 0
    cost = new_stage_difference(naive, other, ["t0", "t1", "t2"])
    assert cost.delta == pytest.approx(-0.1) and (cost.wins, cost.losses) == (0, 2)
    assert cost.p_value == pytest.approx(0.5) and not cost.significant
    with pytest.raises(InputError, match="compared stage by stage"):
        backward_difference(naive[:2], other, ["t0", "t1", "t2"])
    with pytest.raises(InputError, match="no score for t2"):
        backward_difference(naive, [{k: v for k, v in r.items() if k != "t2"} for r in other], ["t0", "t1", "t2"])
