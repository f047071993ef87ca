"""Is a difference between two checkpoints more than noise? Paired tests over per-document outcomes.

Both checkpoints answered the same documents in the same order, so every test here is paired:
- the exact McNemar test (McNemar 1947): under the null, each discordant pair (one right, the other
  wrong) is equally likely to go either way, so the count of one kind is Binomial(discordant, 1/2);
  on graded outcomes it is the exact sign test over documents whose outcomes differ;
- the paired bootstrap (Efron & Tibshirani 1993; Koehn 2004 for its use in NLP evaluation):
  documents are resampled with replacement, the same draw for both checkpoints, and the percentile
  interval of the mean difference is reported. A seeded generator makes it reproducible.

A difference is called significant only when both agree at the same alpha (`Difference.significant`),
so a report never calls noise a tax or a loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb

import numpy as np

from surgery.errors import InputError

ALPHA = 0.05
RESAMPLES = 2000
SEED = 0
CHUNK = 1 << 21  # resampled outcomes held at once (rows x documents), so 10k-document tasks stay small


@dataclass(frozen=True)
class Difference:
    """`after - before` on one task (or one suite), with the evidence that it is not noise.

    `delta` is in the units of the report (raw or normalised score); `low, high` is the bootstrap
    interval of `delta`; `p_value` the exact McNemar (sign test) p-value; `wins` and `losses` the
    documents where `after` beats or trails `before`. Without per-document outcomes the tests cannot
    run: `p_value`, `low` and `high` are None and the difference is never significant.
    """

    delta: float
    low: float | None
    high: float | None
    p_value: float | None
    wins: int
    losses: int
    alpha: float = ALPHA

    @property
    def significant(self) -> bool:
        return agree(self.p_value, self.low, self.high, self.wins, self.losses, self.alpha)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials at p = 1/2 (the McNemar null).

    The distribution is symmetric, so the p-value is 2 * P(X <= min(k, n - k)), capped at 1; it is
    computed in exact fractions, and equals scipy.stats.binomtest(k, n, 0.5).pvalue.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(k, n - k) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def binomial_p(k: int, n: int) -> float:
    """scipy's binomtest where scipy is installed, the exact sum above otherwise."""
    try:
        from scipy.stats import binomtest
    except ImportError:
        return binomial_two_sided(k, n)
    return float(binomtest(k, n, 0.5).pvalue) if n else 1.0


def paired(before: Sequence[float], after: Sequence[float], task: str = "") -> np.ndarray:
    """`after - before` per document, shape (N,); refuses outcomes of different documents."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        where = f" on {task!r}" if task else ""
        raise InputError(f"per-document outcomes{where} are not paired ({a.size} vs {b.size} documents): "
                         "evaluate both checkpoints on the same task version, split and --limit")
    return b - a


def mcnemar(before: Sequence[float], after: Sequence[float]) -> tuple[float, int, int]:
    """Exact McNemar test: (p-value, wins, losses), wins = documents `after` gets right and `before` wrong.

    McNemar (1947); the exact form is the binomial test on the discordant pairs, p = 1/2. On graded
    outcomes (F1, BLEU per document) it is the exact sign test over documents whose outcomes differ.
    """
    d = paired(before, after)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return binomial_p(wins, wins + losses), wins, losses


def bootstrap_interval(before: Sequence[float], after: Sequence[float], alpha: float = ALPHA,
                       resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Paired percentile bootstrap interval (1 - alpha) of mean(after) - mean(before).

    Documents are drawn with replacement, the same draw for both checkpoints (Koehn 2004), `resamples`
    times, from numpy's PCG64 seeded with `seed`: the same inputs give the same interval.
    """
    return stratified_interval([(before, after, 1.0)], alpha, resamples, seed)


def stratified_interval(strata: Sequence[tuple[Sequence[float], Sequence[float], float]], alpha: float = ALPHA,
                        resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Bootstrap interval of sum_k weight_k * (mean(after_k) - mean(before_k)), each stratum (task)
    resampled on its own, in the order given: the interval of a weighted mean of task scores."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    rng = np.random.Generator(np.random.PCG64(seed))
    total = np.zeros(resamples)  # (B,)
    for before, after, weight in strata:
        d = paired(before, after)  # (N,)
        if d.size == 0:
            raise InputError("a task has no per-document outcomes to resample; re-run the evaluation "
                             "with per-document outcomes kept")
        total += weight * _resampled_means(d, resamples, rng)
    low, high = np.quantile(total, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _resampled_means(d: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of `d` over `resamples` draws of len(d) documents with replacement, shape (B,)."""
    rows = max(1, CHUNK // d.size)
    means = [d[rng.integers(0, d.size, size=(min(rows, resamples - start), d.size))].mean(axis=1)
             for start in range(0, resamples, rows)]
    return np.concatenate(means)


def agree(p_value: float | None, low: float | None, high: float | None, wins: int, losses: int,
          alpha: float = ALPHA) -> bool:
    """Significant only when McNemar rejects at `alpha` and the (1 - alpha) interval excludes zero, on
    the same side: more wins than losses with the interval above zero, or fewer with it below.
    (On 0/1 outcomes the sides always match; on graded ones many small gains can hide one large loss.)"""
    if p_value is None or low is None or high is None or p_value >= alpha:
        return False
    return (low > 0 and wins > losses) or (high < 0 and wins < losses)


def compare(before: Sequence[float], after: Sequence[float], delta: float, scale: float = 1.0,
            alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = SEED, task: str = "") -> Difference:
    """Both tests on one task's outcomes, around the reported `delta` (after - before, in report units).

    `scale` (> 0) maps a difference of mean outcomes to the report's units, e.g. 1 / (1 - chance) for
    normalised scores; a percentile interval scales with it. No outcomes: no tests, never significant.
    """
    if paired(before, after, task).size == 0:
        return Difference(delta, None, None, None, 0, 0, alpha)
    p, wins, losses = mcnemar(before, after)
    low, high = bootstrap_interval(before, after, alpha, resamples, seed)
    return Difference(delta, scale * low, scale * high, p, wins, losses, alpha)
