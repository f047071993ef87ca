"""Continual learning from the task-by-stage matrix R: R[i][j] is the score on task j after training
stage i (stage i trains task i, both counted from 0 here; the papers count from 1).

GEM (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"), over T stages:
- average accuracy  ACC = 1/T     sum_{j=0}^{T-1} R[T-1][j]
- backward transfer BWT = 1/(T-1) sum_{j=0}^{T-2} (R[T-1][j] - R[j][j])
- forward transfer  FWT = 1/(T-1) sum_{j=1}^{T-1} (R[j-1][j] - b[j]), b[j] the score of the model
  before any stage (random init in GEM; the base model here) on task j.
RWalk (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"):
- forgetting of task j at stage k > j: f[j] = max_{l<k} R[l][j] - R[k][j]; average forgetting
  F_k = 1/k sum_{j<k} f[j] (the paper's 1/(k-1), tasks counted from 1): denominator T-1 at the last stage;
- intransigence of task k: I[k] = a*[k] - R[k][k], a*[k] the score on task k of a reference model
  trained jointly on the tasks up to k (one model trained on all tasks is the usual stand-in).

`forgetting_report` builds R from a ScoreTable and tests each loss (evals/analysis/significance.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from evals.analysis.metrics import PERPLEXITIES, Scores, normalised_score, oriented, task_difference
from evals.analysis.significance import ALPHA, RESAMPLES, SEED, Difference
from evals.scoring.scores import ScoreTable, TaskScore
from surgery.errors import InputError


def as_matrix(R: Sequence[Sequence[float]]) -> np.ndarray:
    """R as a float array of shape (stages, tasks), refusing ragged or non-finite rows."""
    try:
        m = np.asarray(R, dtype=np.float64)
    except ValueError:
        raise InputError("the stage-by-task matrix is ragged; every stage needs a score on every task") from None
    if m.ndim != 2 or m.size == 0:
        raise InputError(f"the stage-by-task matrix must be 2-D and non-empty, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise InputError("the stage-by-task matrix has a missing or non-finite score; evaluate every stage "
                         "on every task")
    return m


def _stages(R: Sequence[Sequence[float]], least: int = 1) -> np.ndarray:
    """R with one task per stage, (T, T), as GEM's and RWalk's measures need; at least `least` stages."""
    m = as_matrix(R)
    if m.shape[0] != m.shape[1]:
        raise InputError(f"{m.shape[0]} stages but {m.shape[1]} tasks: GEM and RWalk need one task per stage "
                         "(stage i trains task i)")
    if m.shape[0] < least:
        raise InputError(f"{m.shape[0]} stage(s): this measure needs at least {least}")
    return m


def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    """GEM's ACC: the mean over all T tasks of the score after the last stage."""
    m = _stages(R)
    return float(m[-1].mean())


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """GEM's BWT = 1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j]); negative is forgetting."""
    m = _stages(R, least=2)
    T = m.shape[0]
    return float(np.mean(m[-1, : T - 1] - np.diag(m)[: T - 1]))


def forward_transfer(R: Sequence[Sequence[float]], baseline: Sequence[float]) -> float:
    """GEM's FWT = 1/(T-1) sum_{j>=1} (R[j-1][j] - b[j]): what earlier stages did for a task not yet trained."""
    m = _stages(R, least=2)
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (m.shape[0],):
        raise InputError(f"the baseline has {b.size} scores for {m.shape[0]} tasks; give one per task")
    return float(np.mean(np.diag(m, k=1) - b[1:]))


def drop_from_best(R: Sequence[Sequence[float]], k: int | None = None) -> np.ndarray:
    """max_{l<k} R[l][j] - R[k][j] for every task j, shape (tasks,); k is the last stage by default."""
    m = as_matrix(R)
    k = m.shape[0] - 1 if k is None else k
    if not 1 <= k < m.shape[0]:
        raise InputError(f"stage {k} has no earlier stage to compare with (stages 1..{m.shape[0] - 1})")
    return m[:k].max(axis=0) - m[k]


def task_forgetting(R: Sequence[Sequence[float]], k: int | None = None) -> np.ndarray:
    """RWalk's f[j] = max_{l<k} R[l][j] - R[k][j] for the tasks j < k trained before stage k, shape (k,)."""
    m = _stages(R, least=2)
    k = m.shape[0] - 1 if k is None else k
    return drop_from_best(m, k)[:k]


def forgetting(R: Sequence[Sequence[float]], k: int | None = None) -> float:
    """RWalk's average forgetting at stage k (the last by default): the mean of f[j] over the k earlier
    tasks, i.e. the denominator is T-1 at the last stage."""
    return float(task_forgetting(R, k).mean())


def task_intransigence(R: Sequence[Sequence[float]], joint: Sequence[float]) -> np.ndarray:
    """RWalk's I[k] = a*[k] - R[k][k], shape (T,); joint[k] is the jointly trained reference on task k."""
    m = _stages(R)
    a = np.asarray(joint, dtype=np.float64)
    if a.shape != (m.shape[0],):
        raise InputError(f"the joint reference has {a.size} scores for {m.shape[0]} tasks; give one per task")
    return a - np.diag(m)


def intransigence(R: Sequence[Sequence[float]], joint: Sequence[float]) -> float:
    """Mean of I[k] over all T tasks (denominator T); positive: sequential training learns each task
    less well than joint training does."""
    return float(task_intransigence(R, joint).mean())


@dataclass(frozen=True)
class ForgettingReport:
    """A sequence of checkpoints scored on common tasks: the first is the model before any stage.

    `matrix[i][j]`: checkpoint i's score on task j, oriented so higher is better (over-refusal as
    1 - rate) and chance-corrected when normalised, shape (stages+1, tasks); perplexity tasks are
    `skipped` (unbounded). `drops[task]`: last score minus the best earlier one (negative: lost since
    its best), tested; `best[task]`: the checkpoint of that best earlier score. With `stage_tasks` (task trained at each
    stage after the first checkpoint) the GEM and RWalk summaries are filled in; `intransigence` also
    needs the jointly trained reference. `backward[task]` is R[T-1][j] - R[j][j], tested.
    """

    checkpoints: list[str]
    tasks: list[str]
    matrix: np.ndarray
    drops: dict[str, Difference]
    best: dict[str, str]
    skipped: list[str]
    stage_tasks: list[str] | None = None
    average_accuracy: float | None = None
    backward_transfer: float | None = None
    forward_transfer: float | None = None
    forgetting: float | None = None
    intransigence: float | None = None
    backward: dict[str, Difference] | None = None


def common_tasks(table: ScoreTable, checkpoints: Sequence[str]) -> list[str]:
    """Tasks scored on every checkpoint, in the first checkpoint's order; errors name what is missing."""
    missing = [c for c in checkpoints if c not in table]
    if missing:
        raise InputError(f"no scores for {', '.join(missing)}; evaluate them first (surgery eval)")
    tasks = [t for t in table[checkpoints[0]] if all(t in table[c] for c in checkpoints)]
    if not tasks:
        raise InputError(f"no task was evaluated on all of {', '.join(checkpoints)}; evaluate them on the "
                         "same tasks")
    return tasks


def stage_matrix(rows: Sequence[Scores], tasks: Sequence[str], normalise: bool = False) -> np.ndarray:
    """R[i][j] = rows[i][tasks[j]], (stages, tasks): oriented values (higher is better; GEM and RWalk use
    accuracy as it is) or normalised ones."""
    value = normalised_score if normalise else (lambda s: oriented(s).value)
    return as_matrix([[value(row[t]) for t in tasks] for row in rows])


def _tested_drops(rows: Sequence[Scores], names: Sequence[str], tasks: Sequence[str], normalise: bool,
                  alpha: float, resamples: int, seed: int) -> tuple[dict[str, Difference], dict[str, str]]:
    """Per task: last checkpoint against its best earlier one, tested. The best is picked by its score,
    which favours a lucky high; the tests do not correct for that choice among the earlier stages."""
    m = stage_matrix(rows, tasks, normalise)
    best = {t: int(np.argmax(m[:-1, j])) for j, t in enumerate(tasks)}
    drops = {t: task_difference(rows[i][t], rows[-1][t], normalise, alpha, resamples, seed) for t, i in best.items()}
    return drops, {t: names[i] for t, i in best.items()}


def forgetting_report(table: ScoreTable, checkpoints: Sequence[str], stage_tasks: Sequence[str] | None = None,
                      joint: Mapping[str, TaskScore] | None = None, normalise: bool = False,
                      alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = SEED) -> ForgettingReport:
    """The report `surgery forgetting CKPT_0 CKPT_1 ...` prints: CKPT_0 before any stage, CKPT_i after stage i.

    `stage_tasks[i-1]` is the task stage i trained (one per checkpoint after the first); then R is the
    (T, T) block of checkpoints 1..T on those tasks and b is CKPT_0 on them (FWT's baseline).
    """
    if len(checkpoints) < 2:
        raise InputError("give at least two checkpoints: the model before the first stage, then one per stage")
    tasks = common_tasks(table, checkpoints)
    rows = [table[c] for c in checkpoints]
    skipped = [t for t in tasks if rows[0][t].metric in PERPLEXITIES]  # unbounded: no common colour scale
    tasks = [t for t in tasks if t not in skipped]
    if not tasks:
        raise InputError(f"the tasks common to these checkpoints ({', '.join(skipped)}) are all perplexities; "
                         "evaluate them on a task scored by accuracy or exact match")
    if stage_tasks is not None:
        _check_stages(checkpoints, stage_tasks, tasks)
        tasks = list(stage_tasks) + [t for t in tasks if t not in stage_tasks]
    drops, best = _tested_drops(rows, checkpoints, tasks, normalise, alpha, resamples, seed)
    report = ForgettingReport(list(checkpoints), tasks, stage_matrix(rows, tasks, normalise), drops, best, skipped)
    if stage_tasks is None:
        return report
    return _with_stages(report, rows, list(stage_tasks), joint, normalise, alpha, resamples, seed)


def _check_stages(checkpoints: Sequence[str], stage_tasks: Sequence[str], tasks: Sequence[str]) -> None:
    """One distinct task per stage, each scored (and not as a perplexity) on every checkpoint."""
    if len(stage_tasks) != len(checkpoints) - 1:
        raise InputError(f"{len(stage_tasks)} stage tasks for {len(checkpoints) - 1} stages: name the task "
                         "each checkpoint after the first was trained on, in order")
    if len(set(stage_tasks)) != len(stage_tasks):
        raise InputError(f"stage tasks repeat ({', '.join(stage_tasks)}); each stage trains a different task")
    missing = [t for t in stage_tasks if t not in tasks]
    if missing:
        raise InputError(f"stage task(s) {', '.join(missing)} not evaluated on every checkpoint, or scored as a "
                         "perplexity; evaluate every checkpoint on them, with a bounded metric")


def _with_stages(report: ForgettingReport, rows: Sequence[Scores], stage_tasks: list[str],
                 joint: Mapping[str, TaskScore] | None, normalise: bool, alpha: float, resamples: int,
                 seed: int) -> ForgettingReport:
    """GEM's ACC, BWT, FWT and RWalk's forgetting (and intransigence with `joint`) over the stage tasks."""
    T = len(stage_tasks)
    R = stage_matrix(rows[1:], stage_tasks, normalise)  # (T, T)
    b = stage_matrix(rows[:1], stage_tasks, normalise)[0]  # (T,)
    reference = None
    if joint is not None:
        missing = [t for t in stage_tasks if t not in joint]
        if missing:
            raise InputError(f"the joint reference has no score for {', '.join(missing)}; evaluate it first")
        reference = intransigence(R, stage_matrix([joint], stage_tasks, normalise)[0])
    backward = {t: task_difference(rows[1 + j][t], rows[-1][t], normalise, alpha, resamples, seed)
                for j, t in enumerate(stage_tasks[:-1])}
    return replace(report, stage_tasks=stage_tasks, average_accuracy=average_accuracy(R),
                   backward_transfer=backward_transfer(R) if T > 1 else None,
                   forward_transfer=forward_transfer(R, b) if T > 1 else None,
                   forgetting=forgetting(R) if T > 1 else None, intransigence=reference, backward=backward)


def _per_document(before: TaskScore, after: TaskScore) -> np.ndarray:
    """after - before per document of one task (oriented), shape (N,)."""
    from evals.analysis.significance import paired

    return paired(oriented(before).outcomes, oriented(after).outcomes, before.task)


def _strata_difference(strata: list[tuple[np.ndarray, np.ndarray]], alpha: float, resamples: int,
                       seed: int) -> Difference:
    """mean over strata of (mean(b) - mean(a)), each stratum a task's per-document values of two
    sequences; the sign test (McNemar on graded values) over every document pooled, and the stratified
    bootstrap interval of the difference itself."""
    from evals.analysis.significance import binomial_p, stratified_interval

    weight = 1 / len(strata)
    delta = float(sum(weight * (b.mean() - a.mean()) for a, b in strata))
    wins = sum(int((b > a).sum()) for a, b in strata)
    losses = sum(int((b < a).sum()) for a, b in strata)
    low, high = stratified_interval([(a, b, weight) for a, b in strata], alpha, resamples, seed)
    return Difference(delta, low, high, binomial_p(wins, wins + losses), wins, losses, alpha)


def backward_difference(a: Sequence[Scores], b: Sequence[Scores], stage_tasks: Sequence[str], alpha: float = ALPHA,
                        resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """BWT(b) - BWT(a) of two sequences trained on the same stages, tested document by document.

    `a[i]`, `b[i]`: the scores after stage i (T stages). For a document of task j < T-1 a sequence's
    backward transfer is its outcome after the last stage minus its outcome after stage j (-1, 0 or +1
    for exact match); BWT is the mean of these over each task's documents, averaged over the T-1 tasks.
    The sign test compares the two sequences' values document by document (McNemar on graded outcomes,
    as in significance.py); the interval resamples each task's documents on its own.
    """
    _check_pair(a, b, stage_tasks, least=2)
    strata = [(_per_document(a[j][t], a[-1][t]), _per_document(b[j][t], b[-1][t]))
              for j, t in enumerate(stage_tasks[:-1])]
    return _strata_difference(strata, alpha, resamples, seed)


def new_stage_difference(a: Sequence[Scores], b: Sequence[Scores], stage_tasks: Sequence[str], alpha: float = ALPHA,
                         resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """What b's way of keeping the old costs the new: mean over stages j >= 1 of R_b[j][j] - R_a[j][j],
    each stage's score on its own task just after it, tested as `backward_difference` is (the first
    stage, with nothing to keep yet, is left out)."""
    _check_pair(a, b, stage_tasks, least=2)
    strata = [(np.asarray(oriented(a[j][t]).outcomes, dtype=np.float64),
               np.asarray(oriented(b[j][t]).outcomes, dtype=np.float64)) for j, t in enumerate(stage_tasks) if j]
    for (x, y), t in zip(strata, stage_tasks[1:]):
        if x.shape != y.shape:
            raise InputError(f"per-document outcomes on {t!r} are not paired ({x.size} vs {y.size} documents)")
    return _strata_difference(strata, alpha, resamples, seed)


def _check_pair(a: Sequence[Scores], b: Sequence[Scores], stage_tasks: Sequence[str], least: int) -> None:
    if not len(a) == len(b) == len(stage_tasks) or len(stage_tasks) < least:
        raise InputError(f"two sequences of {len(stage_tasks)} stages are compared stage by stage; got {len(a)} and "
                         f"{len(b)} rows of scores for {len(stage_tasks)} stage tasks (at least {least})")
    missing = [t for t in stage_tasks for rows in (a, b) for row in rows if t not in row]
    if missing:
        raise InputError(f"no score for {missing[0]} on every stage of both sequences; evaluate them on it first")
