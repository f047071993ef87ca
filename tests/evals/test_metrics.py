"""Normalised score, general capability, alignment tax and gain, over-refusal, the Pareto front and the
normalised accuracy of a merge, each on a table worked out by hand; and the tables that render them."""

from __future__ import annotations

import pytest

from evals.analysis.metrics import (
    alignment_tax,
    check_comparable,
    general_capability,
    merge_ratios,
    normalised,
    normalised_accuracy,
    over_refusal,
    pareto_front,
    suite_difference,
    task_difference,
)
from evals.report.tables import render, render_tax, tax_line
from evals.scoring.scores import TaskScore
from surgery.errors import InputError


def score(task: str, right: int, n: int, chance: float | None = None, wrong_first: int = 0) -> TaskScore:
    """`right` of `n` documents right: documents wrong_first .. wrong_first+right-1, the rest wrong."""
    outcomes = tuple(1.0 if wrong_first <= i < wrong_first + right else 0.0 for i in range(n))
    return TaskScore(task, "acc", right / n, None, n, chance, outcomes)


def test_normalised_by_hand():
    """chance 1/4: guessing (0.25) -> 0, perfect -> 1, 0.55 -> 0.30/0.75 = 0.4, 0.1 -> -0.15/0.75 = -0.2
    (worse than guessing stays negative); no chance level (generation): the value itself."""
    assert normalised(0.25, 0.25) == 0.0
    assert normalised(1.0, 0.25) == 1.0
    assert normalised(0.55, 0.25) == pytest.approx(0.4)
    assert normalised(0.1, 0.25) == pytest.approx(-0.2)
    assert normalised(0.3, None) == 0.3
    with pytest.raises(InputError, match="chance level"):
        normalised(0.5, 1.0)


# Before: arc 22/40 right (chance 1/4: (0.55 - 0.25)/0.75 = 0.4), boolq 14/20 (chance 1/2: 0.4),
# gsm 30/100 (no chance level: 0.3), harmless 10/50 (0.2).
# After: arc 19/40 ((0.475 - 0.25)/0.75 = 0.3), boolq the same, gsm 33/100 (0.33), harmless 40/50 (0.8).
BEFORE = {"arc": score("arc", 22, 40, 0.25), "boolq": score("boolq", 14, 20, 0.5), "gsm": score("gsm", 30, 100),
          "harmless": score("harmless", 10, 50)}
AFTER = {"arc": score("arc", 19, 40, 0.25), "boolq": score("boolq", 14, 20, 0.5), "gsm": score("gsm", 33, 100),
         "harmless": score("harmless", 40, 50)}
GENERAL, ALIGNMENT = ["arc", "boolq", "gsm"], ["harmless"]


def test_general_capability_by_hand():
    """Equal weights: (0.4 + 0.4 + 0.3)/3 = 0.36667; weights 2:1:1: (0.8 + 0.4 + 0.3)/4 = 0.375."""
    assert general_capability(BEFORE, GENERAL) == pytest.approx(1.1 / 3)
    assert general_capability(BEFORE, {"arc": 2, "boolq": 1, "gsm": 1}) == pytest.approx(0.375)
    assert general_capability(AFTER, GENERAL) == pytest.approx(1.03 / 3)


def test_missing_task_and_bad_weights_say_how_to_fix():
    with pytest.raises(InputError, match="no score for mmlu.*surgery eval --tasks mmlu"):
        general_capability(BEFORE, ["arc", "mmlu"])
    with pytest.raises(InputError, match="weights"):
        general_capability(BEFORE, {"arc": -1, "boolq": 2})
    with pytest.raises(InputError, match="no tasks"):
        general_capability(BEFORE, [])


def test_alignment_tax_by_hand():
    """G 1.1/3 -> 1.03/3: tax 0.07/3 = 0.02333, relative 0.07/1.1 = 6.36%; worst task arc (0.4 -> 0.3,
    -0.1); alignment 0.2 -> 0.8, gain 0.6. arc lost 3 documents of 40 (McNemar p = 2/8): noise, so
    the tax is not called significant; harmless won 30 of 50 with no loss: a significant gain."""
    tax = alignment_tax(BEFORE, AFTER, GENERAL, ALIGNMENT, resamples=500)
    assert tax.general_before == pytest.approx(1.1 / 3) and tax.general_after == pytest.approx(1.03 / 3)
    assert tax.tax == pytest.approx(0.07 / 3)
    assert tax.relative == pytest.approx(0.07 / 1.1)
    assert tax.worst == "arc" and tax.tasks["arc"].delta == pytest.approx(-0.1)
    assert tax.tasks["arc"].p_value == pytest.approx(0.25) and not tax.tasks["arc"].significant
    assert tax.tasks["boolq"].delta == 0 and tax.tasks["boolq"].p_value == 1.0
    assert tax.gain == pytest.approx(0.6) and tax.gain_test.significant
    assert (tax.gain_test.wins, tax.gain_test.losses) == (30, 0)
    assert not tax.significant


def test_a_real_tax_is_significant():
    """arc falls from 22/40 to 4/40 (18 losses, no wins): the general suite's pooled McNemar has
    18 losses and the 3 gsm wins, and the bootstrap interval of the G change lies below zero."""
    after = dict(AFTER, arc=score("arc", 4, 40, 0.25))
    tax = alignment_tax(BEFORE, after, GENERAL, ALIGNMENT, resamples=500)
    assert tax.worst == "arc" and tax.tasks["arc"].significant
    assert (tax.tax_test.wins, tax.tax_test.losses) == (3, 18)
    assert tax.tax > 0 and tax.tax_test.high < 0 and tax.significant


def test_task_difference_in_normalised_units():
    """arc's interval is in normalised units: raw differences divided by 1 - 1/4."""
    norm = task_difference(BEFORE["arc"], AFTER["arc"], normalise=True, resamples=300)
    raw = task_difference(BEFORE["arc"], AFTER["arc"], normalise=False, resamples=300)
    assert raw.delta == pytest.approx(-0.075) and norm.delta == pytest.approx(-0.1)
    assert norm.low == pytest.approx(raw.low / 0.75) and norm.high == pytest.approx(raw.high / 0.75)


def test_suite_difference_without_outcomes_is_untested():
    bare = {t: TaskScore(s.task, s.metric, s.value, None, s.n, s.chance, ()) for t, s in BEFORE.items()}
    diff = suite_difference(bare, AFTER, GENERAL)
    assert diff.delta == pytest.approx(-0.07 / 3) and diff.p_value is None and not diff.significant


def test_relative_tax_is_undefined_at_chance():
    at_chance = {"arc": score("arc", 10, 40, 0.25), "harmless": BEFORE["harmless"]}
    worse = {"arc": score("arc", 9, 40, 0.25), "harmless": AFTER["harmless"]}
    assert alignment_tax(at_chance, worse, ["arc"], ALIGNMENT, resamples=100).relative is None


def test_over_refusal_by_hand():
    """Benign requests 0, 1, 3, 4; refused among them: 0 and 3 -> 2/4 (refusing 2, harmful, is right)."""
    assert over_refusal([1, 0, 1, 1, 0], [1, 1, 0, 1, 1]) == 0.5
    with pytest.raises(InputError, match="no benign"):
        over_refusal([1], [0])
    with pytest.raises(InputError, match="one flag per request"):
        over_refusal([1, 0], [1])


def test_pareto_front_by_hand():
    """c (0.4, 0.4) is beaten by b (0.5, 0.5), f (0.1, 0.8) by a (0.1, 0.9); b and e tie and both stay."""
    points = {"a": (0.1, 0.9), "b": (0.5, 0.5), "c": (0.4, 0.4), "d": (0.9, 0.1), "e": (0.5, 0.5), "f": (0.1, 0.8)}
    assert pareto_front(points) == ["a", "b", "e", "d"]
    assert pareto_front({"only": (0.0, 0.0)}) == ["only"]


def test_merge_normalised_accuracy_by_hand():
    """Experts: add 0.8, reverse 0.5; merged: add 0.6, reverse 0.5 -> ratios 0.75 and 1.0, mean 0.875.
    The merged model's other tasks (capital) do not count."""
    experts = {"add": score("add", 8, 10), "reverse": score("reverse", 5, 10)}
    merged = {"add": score("add", 6, 10), "reverse": score("reverse", 5, 10), "capital": score("capital", 3, 10)}
    assert merge_ratios(merged, experts) == {"add": pytest.approx(0.75), "reverse": pytest.approx(1.0)}
    assert normalised_accuracy(merged, experts) == pytest.approx(0.875)
    with pytest.raises(InputError, match="scores 0"):
        merge_ratios(merged, {"add": score("add", 0, 10)})
    with pytest.raises(InputError, match="no score for refuse"):
        merge_ratios(merged, {"refuse": score("refuse", 5, 10)})


def test_render_formats():
    """Numbers right-aligned with four decimals, a task score as value ± stderr, a missing cell '-'
    (blank in CSV, which keeps full precision and a task score's value)."""
    rows = [{"checkpoint": "before", "arc": BEFORE["arc"], "G": 0.4},
            {"checkpoint": "after", "arc": TaskScore("arc", "acc", 0.475, 0.0125, 40, 0.25, ()), "G": 0.35},
            {"checkpoint": "partial", "arc": 0.55}]
    assert render(rows, "table").splitlines() == ["checkpoint              arc       G",
                                                  "----------  ---------------  ------",
                                                  "before               0.5500  0.4000",
                                                  "after       0.4750 ± 0.0125  0.3500",
                                                  "partial              0.5500       -"]
    assert render(rows, "md", columns=["checkpoint", "arc"]).splitlines() == [
        "| checkpoint | arc |", "|---|---:|", "| before | 0.5500 |", "| after | 0.4750 ± 0.0125 |",
        "| partial | 0.5500 |"]
    assert render(rows, "csv").splitlines() == [
        "checkpoint,arc,G", "before,0.55,0.4", "after,0.475,0.35", "partial,0.55,"]
    with pytest.raises(InputError, match="table, md, csv"):
        render(rows, "html")


def test_tax_table_calls_noise_noise():
    text = render_tax(alignment_tax(BEFORE, AFTER, GENERAL, ALIGNMENT, resamples=300), "base", "aligned")
    assert "tax +0.0233 (relative 6.4%)" in text and ": noise" in text
    assert "worst task: arc (-0.1000, noise)" in text
    line = next(l for l in text.splitlines() if l.startswith("harmless  alignment"))
    assert line.endswith("significant")


def test_tax_line_is_the_headline_in_one_line():
    """The numbers of test_alignment_tax_by_hand: G 1.1/3 -> 1.03/3, tax 0.0233 (noise), gain 0.6 (significant)."""
    line = tax_line(alignment_tax(BEFORE, AFTER, GENERAL, ALIGNMENT, resamples=300), "base", "aligned")
    assert line.startswith("alignment tax of aligned over its parent base: G 0.367 -> 0.343, tax +0.023 (")
    assert "gain +0.600 (" in line and line.endswith(": significant)") and "\n" not in line
    tax_part, gain_part = line.split("; alignment ")
    assert tax_part.endswith(": noise)") and gain_part.startswith("0.200 -> 0.800")


def test_lower_is_better_scores_are_turned_around():
    """over_refusal is a rate of refusing benign requests: 0.3 -> 0.1 is a gain of 0.2 in the alignment
    suite (oriented as 1 - rate: 0.7 -> 0.9); with refusal 0.2 -> 0.8, alignment G (0.45 -> 0.85).
    The 20 fewer refusals are 20 wins, not losses. A perplexity cannot enter G."""
    before = dict(BEFORE, over_refusal=score("over_refusal", 30, 100), refusal=score("refusal", 10, 50))
    after = dict(AFTER, over_refusal=score("over_refusal", 10, 100), refusal=score("refusal", 40, 50))
    tax = alignment_tax(before, after, GENERAL, ["refusal", "over_refusal"], resamples=300)
    assert tax.alignment_before == pytest.approx(0.45) and tax.alignment_after == pytest.approx(0.85)
    d = tax.alignment_tasks["over_refusal"]
    assert d.delta == pytest.approx(0.2) and (d.wins, d.losses) == (20, 0) and d.low > 0 and d.significant
    ppl = TaskScore("wiki", "word_perplexity", 30.0, None, 2, None, (20.0, 40.0))
    with pytest.raises(InputError, match="wiki report a perplexity"):
        general_capability({"wiki": ppl}, ["wiki"])
    lower = TaskScore("wiki", "word_perplexity", 25.0, None, 2, None, (15.0, 35.0))
    assert task_difference(ppl, lower, resamples=100).delta == pytest.approx(5.0)  # 5 points less perplexed


def test_scores_evaluated_differently_are_refused():
    same = {"version": "1.0", "num_fewshot": 0, "settings": "limit=None;fewshot=None"}
    check_comparable({"a": {"arc": same, "gsm": same}, "b": {"arc": dict(same), "other": same}})
    with pytest.raises(InputError, match=r"arc num_fewshot: 0 \(a\) vs 5 \(b\).*gsm version: 1.0 \(a\) vs 2.0 \(b\)"):
        check_comparable({"a": {"arc": same, "gsm": same},
                          "b": {"arc": dict(same, num_fewshot=5), "gsm": dict(same, version="2.0")}})
