"""Scalar metrics over one checkpoint's task scores: normalised score, general capability, alignment
tax and gain, over-refusal, the Pareto front of runs, and the normalised accuracy of a merge.

- Normalised score: chance-corrected, (s - chance) / (1 - chance), as the Open LLM Leaderboard v2
  normalises multiple-choice accuracy: 0 is guessing, 1 is perfect, below 0 is worse than guessing.
- Scores where lower is better are first turned around (`oriented`): a rate r as 1 - r, a perplexity
  p as -p; perplexities never enter a mean.
- General capability G: the weighted mean of normalised scores over a suite's tasks.
- Alignment tax (Ouyang et al. 2022, InstructGPT; Lin et al. 2024, "Mitigating the Alignment
  Tax of RLHF"): G before alignment minus G after, with the alignment gain measured on the alignment
  suite beside it, and every difference tested (evals/analysis/significance.py) so noise is never called a tax.
- Over-refusal (Röttger et al. 2024, XSTest): the share of benign requests refused.
- Pareto front: the runs no other run matches or beats on both alignment and G.
- Normalised accuracy of a merge (Ilharco et al. 2023, task arithmetic; Yadav et al. 2023, TIES):
  the merged model's score on each expert's task over that expert's own score, averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from evals.analysis.significance import (
    ALPHA,
    RESAMPLES,
    SEED,
    Difference,
    binomial_p,
    compare,
    mcnemar,
    stratified_interval,
)
from evals.scoring.scores import TaskScore
from surgery.errors import InputError

# lm-eval's task YAML marks these `higher_is_better: false`; a TaskScore does not carry that flag.
PERPLEXITIES = frozenset({"word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"})
LOWER_IS_BETTER_TASKS = frozenset({"over_refusal", "over_refusal_lookalike"})  # rates, lower is better (alignment)

Scores = Mapping[str, TaskScore]  # one checkpoint's row of a ScoreTable: task -> score
Suite = Mapping[str, float] | Sequence[str]  # tasks with weights, or tasks weighted equally


def normalised(value: float, chance: float | None) -> float:
    """(value - chance) / (1 - chance); the value itself where there is no chance level (generation)."""
    if chance is None:
        return value
    if not 0 <= chance < 1:
        raise InputError(f"a chance level of {chance} cannot be corrected for; it must lie in [0, 1)")
    return (value - chance) / (1 - chance)


def oriented(score: TaskScore) -> TaskScore:
    """The score turned so that higher is better, outcomes too: a lower-is-better rate r becomes 1 - r
    (over-refusal becomes the share of benign requests answered), a perplexity p becomes -p."""
    if score.metric in PERPLEXITIES:
        return replace(score, metric=f"-{score.metric}", value=-score.value,
                       outcomes=tuple(-o for o in score.outcomes))
    if score.task in LOWER_IS_BETTER_TASKS:
        return replace(score, metric=f"1 - {score.metric}", value=1 - score.value,
                       outcomes=tuple(1 - o for o in score.outcomes))
    return score


def normalised_score(score: TaskScore) -> float:
    """The oriented score, chance-corrected."""
    return normalised(oriented(score).value, score.chance)


def _bounded(scores: Scores, what: str) -> None:
    """Perplexities have no upper bound and no chance level: they cannot be averaged with accuracies."""
    unbounded = [t for t, s in scores.items() if s.metric in PERPLEXITIES]
    if unbounded:
        raise InputError(f"{', '.join(unbounded)} report a perplexity, which cannot enter {what}; leave "
                         "them out of the suite (compare them with `surgery forgetting`)")


def _scale(score: TaskScore) -> float:
    """How much a raw difference on this task weighs once normalised: 1 / (1 - chance)."""
    return 1.0 if score.chance is None else 1 / (1 - score.chance)


def suite_weights(suite: Suite) -> dict[str, float]:
    """{task: weight} with weights summing to 1; a plain list of tasks weighs them equally."""
    raw = dict(suite) if isinstance(suite, Mapping) else {task: 1.0 for task in suite}
    if not raw:
        raise InputError("the suite has no tasks; name at least one task")
    if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
        raise InputError(f"suite weights must be >= 0 with a positive sum, got {raw}")
    total = sum(raw.values())
    return {task: w / total for task, w in raw.items()}


def suite_scores(scores: Scores, suite: Suite, who: str = "the checkpoint") -> dict[str, TaskScore]:
    """The suite's scores, or an error naming the tasks that were not evaluated."""
    missing = [t for t in suite_weights(suite) if t not in scores]
    if missing:
        raise InputError(f"{who} has no score for {', '.join(missing)}; evaluate it on those tasks first "
                         f"(surgery eval --tasks {','.join(missing)})")
    picked = {t: scores[t] for t in suite_weights(suite)}
    _bounded(picked, "a suite's mean")
    return picked


def general_capability(scores: Scores, suite: Suite) -> float:
    """G = sum_j w_j * normalised(s_j) with the suite's weights w_j summing to 1."""
    picked = suite_scores(scores, suite)
    return sum(w * normalised_score(picked[t]) for t, w in suite_weights(suite).items())


def task_difference(before: TaskScore, after: TaskScore, normalise: bool = True, alpha: float = ALPHA,
                    resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """after - before on one task (normalised scores, or raw values), with McNemar and the paired bootstrap."""
    b, a = oriented(before), oriented(after)
    if normalise:
        delta, scale = normalised_score(after) - normalised_score(before), _scale(before)
    else:
        delta, scale = a.value - b.value, 1.0
    return compare(b.outcomes, a.outcomes, delta, scale, alpha, resamples, seed, before.task)


def suite_difference(before: Scores, after: Scores, suite: Suite, alpha: float = ALPHA,
                     resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """G(after) - G(before), tested over all the suite's documents at once.

    The interval is a stratified bootstrap (each task resampled on its own, weighted by w_j / (1 - c_j),
    so it is the interval of the G difference itself); McNemar pools the discordant documents of all
    the suite's tasks. Without per-document outcomes on every task, no tests are run.
    """
    weights = suite_weights(suite)
    b, a = suite_scores(before, suite, "the checkpoint before"), suite_scores(after, suite, "the checkpoint after")
    delta = general_capability(after, suite) - general_capability(before, suite)
    if any(not b[t].outcomes or not a[t].outcomes for t in weights):
        return Difference(delta, None, None, None, 0, 0, alpha)
    b, a = {t: oriented(s) for t, s in b.items()}, {t: oriented(s) for t, s in a.items()}
    strata = [(b[t].outcomes, a[t].outcomes, w * _scale(b[t])) for t, w in weights.items()]
    low, high = stratified_interval(strata, alpha, resamples, seed)
    counts = [mcnemar(b[t].outcomes, a[t].outcomes)[1:] for t in weights]
    wins, losses = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return Difference(delta, low, high, binomial_p(wins, wins + losses), wins, losses, alpha)


@dataclass(frozen=True)
class AlignmentTax:
    """What alignment cost on the general suite and what it bought on the alignment suite.

    `tax = G_before - G_after` (positive: capability lost); `relative = tax / G_before` (None when
    G_before <= 0, i.e. no better than chance); `worst` the general task with the largest drop of
    normalised score. Every `Difference` is after - before, with its tests.
    """

    general_before: float
    general_after: float
    tax: float
    relative: float | None
    tax_test: Difference
    worst: str
    tasks: dict[str, Difference]
    alignment_before: float
    alignment_after: float
    gain: float
    gain_test: Difference
    alignment_tasks: dict[str, Difference]

    @property
    def significant(self) -> bool:
        """A tax only when G fell and both tests say so."""
        return self.tax > 0 and self.tax_test.significant


def alignment_tax(before: Scores, after: Scores, general: Suite, alignment: Suite, alpha: float = ALPHA,
                  resamples: int = RESAMPLES, seed: int = SEED) -> AlignmentTax:
    """The alignment tax of going from `before` to `after` (InstructGPT's term, Ouyang et al. 2022)."""
    def per_task(suite: Suite) -> dict[str, Difference]:
        b = suite_scores(before, suite, "the checkpoint before")
        a = suite_scores(after, suite, "the checkpoint after")
        return {t: task_difference(b[t], a[t], True, alpha, resamples, seed) for t in b}

    tasks, aligned = per_task(general), per_task(alignment)
    g_before, g_after = general_capability(before, general), general_capability(after, general)
    a_before, a_after = general_capability(before, alignment), general_capability(after, alignment)
    return AlignmentTax(
        general_before=g_before, general_after=g_after, tax=g_before - g_after,
        relative=(g_before - g_after) / g_before if g_before > 0 else None,
        tax_test=suite_difference(before, after, general, alpha, resamples, seed),
        worst=min(tasks, key=lambda t: tasks[t].delta), tasks=tasks,
        alignment_before=a_before, alignment_after=a_after, gain=a_after - a_before,
        gain_test=suite_difference(before, after, alignment, alpha, resamples, seed), alignment_tasks=aligned)


PROVENANCE = ("version", "num_fewshot", "settings")  # task version, few-shot count, limit and few-shot asked


def check_comparable(provenance: Mapping[str, Mapping[str, Mapping[str, object]]]) -> None:
    """Refuse to compare scores evaluated differently: {checkpoint: {task: {"version", "num_fewshot",
    "settings"}}} must agree task by task; the error names every task and field that differs."""
    problems = []
    for task in dict.fromkeys(t for per_task in provenance.values() for t in per_task):
        seen = {name: per_task[task] for name, per_task in provenance.items() if task in per_task}
        for field in PROVENANCE:
            values = {name: p.get(field) for name, p in seen.items()}
            if len({str(v) for v in values.values()}) > 1:
                problems.append(f"{task} {field}: " + " vs ".join(f"{v} ({name})" for name, v in values.items()))
    if problems:
        raise InputError("the checkpoints were evaluated differently, so their scores do not compare: "
                         + "; ".join(problems) + ". Evaluate them again with the same task versions, "
                         "--num-fewshot and --limit (surgery eval --force ...)")


def over_refusal(refused: Sequence[bool], benign: Sequence[bool]) -> float:
    """Share of benign requests refused (XSTest, Röttger et al. 2024): refused & benign / benign."""
    if len(refused) != len(benign):
        raise InputError(f"{len(refused)} refusal flags for {len(benign)} requests; give one flag per request")
    n_benign = sum(bool(b) for b in benign)
    if n_benign == 0:
        raise InputError("no benign requests to measure over-refusal on; add benign prompts to the task")
    return sum(bool(r) and bool(b) for r, b in zip(refused, benign)) / n_benign


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Runs no other run beats: {run: (alignment, general)}, both higher-is-better; the front's runs in
    increasing alignment. A run is dominated when another is >= on both and > on one; ties all stay."""
    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())

    front = [run for run, p in points.items() if not dominated(p)]
    return sorted(front, key=lambda run: (points[run][0], -points[run][1], run))


def merge_ratios(merged: Scores, experts: Scores) -> dict[str, float]:
    """{task: merged score / expert score} for each expert's own task; `experts` maps each task to the
    score of the expert fine-tuned on it (oriented, not chance-corrected: Ilharco et al. 2023 divide
    accuracies)."""
    missing = [t for t in experts if t not in merged]
    if missing:
        raise InputError(f"the merged model has no score for {', '.join(missing)}; evaluate it on every "
                         "expert's task")
    _bounded(experts, "a ratio of scores")
    zero = [t for t, s in experts.items() if oriented(s).value <= 0]
    if zero:
        raise InputError(f"the expert on {', '.join(zero)} scores 0, so no ratio exists; check that expert "
                         "was evaluated on its own task")
    return {t: oriented(merged[t]).value / oriented(s).value for t, s in experts.items()}


def normalised_accuracy(merged: Scores, experts: Scores) -> float:
    """(1/K) sum_k merged_k / expert_k over the K experts' tasks."""
    ratios = merge_ratios(merged, experts)
    if not ratios:
        raise InputError("no experts given; map each expert's task to its score")
    return sum(ratios.values()) / len(ratios)
