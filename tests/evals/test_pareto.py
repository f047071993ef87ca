"""Runs placed at (alignment, general) from their task scores, worked out by hand."""

from __future__ import annotations

import pytest

from evals.analysis.metrics import pareto_front
from evals.analysis.pareto import pareto_points
from evals.scoring.scores import TaskScore


def score(task: str, value: float, chance: float | None = None) -> TaskScore:
    return TaskScore(task=task, metric="acc", value=value, stderr=None, n=100, chance=chance, outcomes=())


def test_points_are_the_two_suite_means_and_runs_missing_a_task_are_left_out():
    """general = {g1, g2 (4-way multiple choice, chance 0.25)}, alignment = {a}:
    sft: G = (0.8 + (0.55 - 0.25) / 0.75) / 2 = (0.8 + 0.4) / 2 = 0.6, alignment 0.2;
    aligned: G = (0.7 + (0.4 - 0.25) / 0.75) / 2 = (0.7 + 0.2) / 2 = 0.45, alignment 0.9;
    worse: G = (0.5 + 0.0) / 2 = 0.25, alignment 0.1, dominated by sft; partial lacks g2."""
    table = {
        "sft": {"g1": score("g1", 0.8), "g2": score("g2", 0.55, 0.25), "a": score("a", 0.2)},
        "aligned": {"g1": score("g1", 0.7), "g2": score("g2", 0.4, 0.25), "a": score("a", 0.9)},
        "worse": {"g1": score("g1", 0.5), "g2": score("g2", 0.25, 0.25), "a": score("a", 0.1)},
        "partial": {"g1": score("g1", 0.9), "a": score("a", 0.9)},
    }
    points, skipped = pareto_points(table, ["g1", "g2"], ["a"])
    assert skipped == ["partial"]
    assert points["sft"] == pytest.approx((0.2, 0.6))
    assert points["aligned"] == pytest.approx((0.9, 0.45))
    assert points["worse"] == pytest.approx((0.1, 0.25))
    assert pareto_front(points) == ["sft", "aligned"]
