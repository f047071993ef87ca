"""`surgery tax` and `surgery forgetting` on a results store filled by hand (no lm-eval run): the
tables they print, the heat map, and the refusal to compare scores evaluated differently."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from evals.cli import forgetting, tax
from evals.scoring.checkpoints import Checkpoint
from evals.scoring.harness import Evaluated
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store

N = 40


def _evaluated(task: str, right: int, version: str = "1.0", shots: int = 0) -> Evaluated:
    outcomes = tuple(1.0 if i < right else 0.0 for i in range(N))
    return Evaluated(TaskScore(task, "exact_match", right / N, None, N, None, outcomes), version, shots)


def _fill(db: str, scores: dict[str, dict[str, int]], key: str = "limit=None;fewshot=None", **changed) -> None:
    """Register each name (a path that need not exist) and store its {task: documents right}."""
    with Store(db) as store:
        for name, tasks in scores.items():
            path = os.path.abspath(name)  # as `surgery eval` registers them
            store.register(path, Checkpoint(path, f"hash-{name}"), {})
            results = {t: _evaluated(t, right, **changed.get(name, {}).get(t, {})) for t, right in tasks.items()}
            store.put(path, f"hash-{name}", {}, key, "0.4.13", results)


@pytest.fixture
def store_path(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)  # names are stored as absolute paths under here
    return str(tmp_path / "evals.sqlite")


def test_tax_prints_headline_and_tests(store_path):
    """bigbench_arithmetic 30 -> 10 of 40 (20 losses): a tax; general_knowledge unchanged;
    refusal 5 -> 35 (30 wins): a gain; over_refusal 4 -> 4 (rate, lower is better)."""
    _fill(store_path, {
        "base": {"bigbench_arithmetic": 30, "bigbench_general_knowledge": 20, "refusal": 5, "over_refusal": 4},
        "aligned": {"bigbench_arithmetic": 10, "bigbench_general_knowledge": 20, "refusal": 35, "over_refusal": 4}})
    result = CliRunner().invoke(tax, ["--before", "base", "--after", "aligned", "--db", store_path])
    assert result.exit_code == 0, result.output
    assert "general capability G: 0.6250 -> 0.3750; tax +0.2500 (relative 40.0%)" in result.output
    assert "worst task: bigbench_arithmetic (-0.5000, significant)" in result.output
    assert "gain +0.3750" in result.output
    md = CliRunner().invoke(tax, ["--before", "base", "--after", "aligned", "--db", store_path, "--format", "md"])
    assert "| bigbench_arithmetic | general |" in md.output


def test_tax_refuses_different_fewshot(store_path):
    _fill(store_path, {"base": {"bigbench_arithmetic": 30, "bigbench_general_knowledge": 20, "refusal": 5,
                                "over_refusal": 4},
                       "aligned": {"bigbench_arithmetic": 10, "bigbench_general_knowledge": 20, "refusal": 35,
                                   "over_refusal": 4}},
          aligned={"bigbench_arithmetic": {"shots": 3}})
    result = CliRunner().invoke(tax, ["--before", "base", "--after", "aligned", "--db", store_path])
    assert result.exit_code == 2
    assert "bigbench_arithmetic num_fewshot: 0 (base) vs 3 (aligned)" in result.output


def test_tax_names_a_checkpoint_not_evaluated(store_path):
    _fill(store_path, {"base": {"bigbench_arithmetic": 30}})
    result = CliRunner().invoke(tax, ["--before", "base", "--after", "nope", "--db", store_path])
    assert result.exit_code == 2 and "run `surgery eval" in result.output


def test_forgetting_prints_and_draws(store_path, tmp_path):
    _fill(store_path, {"s0": {"world_add": 4, "world_reverse": 2, "world_capital": 30},
                       "s1": {"world_add": 36, "world_reverse": 3, "world_capital": 28},
                       "s2": {"world_add": 20, "world_reverse": 38, "world_capital": 29}})
    png = tmp_path / "forgetting.png"
    result = CliRunner().invoke(forgetting, ["s0", "s1", "s2", "--stage-tasks", "world_add,world_reverse",
                                             "--png", str(png), "--db", store_path])
    assert result.exit_code == 0, result.output
    assert "BWT -0.4000, FWT +0.0250 (GEM, denominator T-1)" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_tax_and_pareto_read_the_safety_tasks(store_path, tmp_path):
    """The alignment suite's safety tasks, each scored on 40 documents: refusal per harm category 4 -> 36
    right, over-refusal on look-alikes 2 -> 10 (a rate, lower is better: 0.95 -> 0.75 once turned),
    uncertainty 0 -> 20, the medical policy 10 -> 30, beside the world's refusal 5 -> 35 and over-refusal
    4 -> 4. The tax lists every one of them; the alignment axis of the Pareto plot is the mean of the 12,
    over-refusal turned: before (7 * 0.1 + 0.95 + 0 + 0.25 + 0.125 + 0.9) / 12 = 0.24375, after
    (7 * 0.9 + 0.75 + 0.5 + 0.75 + 0.875 + 0.9) / 12 = 0.8395833."""
    from evals.analysis.pareto import pareto_points
    from evals.cli import leaderboard
    from evals.scoring.suites import HARM_CATEGORIES, suite_tasks

    safety = {f"refusal_{c}": (4, 36) for c in HARM_CATEGORIES}
    safety |= {"over_refusal_lookalike": (2, 10), "uncertainty": (0, 20), "policy_medical": (10, 30),
               "refusal": (5, 35), "over_refusal": (4, 4)}
    general = {"bigbench_arithmetic": (30, 28), "bigbench_general_knowledge": (20, 20)}
    _fill(store_path, {name: {t: v[k] for t, v in (safety | general).items()}
                       for k, name in enumerate(("before", "after"))})
    result = CliRunner().invoke(tax, ["--before", "before", "--after", "after", "--db", store_path])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.splitlines() if line.split()]
    assert all(task in listed for task in safety), result.output
    assert "over_refusal_lookalike: counted as 1 - rate" in result.output
    with Store(store_path, readonly=True) as store:
        points, skipped = pareto_points(store.table(), suite_tasks("general"), suite_tasks("alignment"))
    assert skipped == []
    assert points[os.path.abspath("before")][0] == pytest.approx(0.24375)
    assert points[os.path.abspath("after")][0] == pytest.approx(0.8395833)
    png = tmp_path / "pareto.png"
    drawn = CliRunner().invoke(leaderboard, ["--db", store_path, "--pareto", str(png), "--general-suite", "general"])
    assert drawn.exit_code == 0, drawn.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
