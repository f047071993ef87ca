"""The paired tests: exact McNemar against scipy and hand values, the bootstrap interval's coverage and
reproducibility, and the rule that a difference is significant only when both tests agree."""

from __future__ import annotations

import numpy as np
import pytest

from evals.analysis.significance import (
    Difference,
    agree,
    binomial_p,
    binomial_two_sided,
    bootstrap_interval,
    compare,
    mcnemar,
    stratified_interval,
)
from surgery.errors import InputError


def test_binomial_by_hand():
    """Two-sided exact p at 1/2 is 2 * P(X <= min(k, n - k)), capped at 1:
    n=5, k=0: 2 * 1/32 = 0.0625; n=10, k=2: 2 * (1 + 10 + 45)/1024 = 0.109375;
    n=6, k=3: 2 * (1 + 6 + 15 + 20)/64 > 1 -> 1; n=0: no discordant pair, p = 1."""
    assert binomial_two_sided(0, 5) == 0.0625
    assert binomial_two_sided(5, 5) == 0.0625
    assert binomial_two_sided(2, 10) == 0.109375
    assert binomial_two_sided(3, 6) == 1.0
    assert binomial_two_sided(0, 0) == 1.0
    with pytest.raises(ValueError):
        binomial_two_sided(4, 3)


def test_binomial_equals_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 3, 5, 8, 13, 21, 40, 101):
        for k in range(n + 1):
            assert binomial_two_sided(k, n) == pytest.approx(scipy_stats.binomtest(k, n, 0.5).pvalue, rel=1e-9)
    assert binomial_p(7, 30) == pytest.approx(scipy_stats.binomtest(7, 30, 0.5).pvalue)


def test_mcnemar_by_hand():
    """before 1 1 0 0 1 0 1 0, after 1 0 1 1 1 1 1 1: after wins on documents 2, 3, 5, 7 and loses on 1,
    so 5 discordant pairs, 4 one way: p = 2 * P(X <= 1 | n=5) = 2 * (1 + 5)/32 = 0.375."""
    p, wins, losses = mcnemar([1, 1, 0, 0, 1, 0, 1, 0], [1, 0, 1, 1, 1, 1, 1, 1])
    assert (wins, losses) == (4, 1)
    assert p == pytest.approx(0.375)


def test_mcnemar_concordant_pairs_do_not_count():
    """20 documents both get right and 20 both get wrong add nothing: 8 wins, 0 losses -> 2/256."""
    before = [1] * 20 + [0] * 20 + [0] * 8
    after = [1] * 20 + [0] * 20 + [1] * 8
    assert mcnemar(before, after) == (pytest.approx(2 / 256), 8, 0)


def test_unpaired_outcomes_are_refused():
    with pytest.raises(InputError, match="same task version"):
        mcnemar([1, 0, 1], [1, 0])


def _simulated_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated 0/1 outcomes: P(before right) = 0.6, P(after right) = 0.7, true difference 0.1."""
    u = rng.random(n)
    noise = rng.random(n) < 0.2  # 20% of documents answered independently of the other checkpoint
    v = np.where(noise, rng.random(n), u)
    return (u < 0.6).astype(float), (v < 0.7).astype(float)


def test_bootstrap_covers_the_true_difference():
    """Over 100 seeded simulated evaluations of 200 documents, the 90% interval holds the true
    difference (0.1) close to 90% of the time (percentile intervals run a little narrow at this n)."""
    rng = np.random.Generator(np.random.PCG64(1234))
    covered = 0
    for trial in range(100):
        before, after = _simulated_pair(rng, 200)
        low, high = bootstrap_interval(before, after, alpha=0.1, resamples=500, seed=trial)
        covered += low <= 0.1 <= high
    assert 80 <= covered <= 97


def test_bootstrap_is_reproducible():
    rng = np.random.Generator(np.random.PCG64(7))
    before, after = _simulated_pair(rng, 300)
    first = bootstrap_interval(before, after, seed=3)
    assert bootstrap_interval(before, after, seed=3) == first
    assert bootstrap_interval(before, after, seed=4) != first
    assert first[0] < after.mean() - before.mean() < first[1]


def test_stratified_weights_scale_the_interval():
    """One stratum with weight 2 gives twice the interval of weight 1 (same seed, same draws)."""
    rng = np.random.Generator(np.random.PCG64(8))
    before, after = _simulated_pair(rng, 100)
    low, high = stratified_interval([(before, after, 1.0)], seed=0)
    low2, high2 = stratified_interval([(before, after, 2.0)], seed=0)
    assert (low2, high2) == pytest.approx((2 * low, 2 * high))


def test_both_tests_must_agree():
    assert agree(0.01, 0.02, 0.1, wins=9, losses=2)
    assert not agree(0.2, 0.02, 0.1, wins=9, losses=2)  # McNemar does not reject
    assert not agree(0.01, -0.01, 0.1, wins=9, losses=2)  # the interval holds zero
    assert not agree(0.01, 0.02, 0.1, wins=2, losses=9)  # they point opposite ways
    assert agree(0.01, -0.1, -0.02, wins=2, losses=9)
    assert not agree(None, None, None, wins=0, losses=0)


def test_compare_a_clear_gain_and_noise():
    """40 documents wrong before and right after, 2 the other way, 58 unchanged: a clear gain.
    A single document flipped among 100 is noise."""
    before = [0] * 40 + [1] * 2 + [1] * 58
    after = [1] * 40 + [0] * 2 + [1] * 58
    gain = compare(before, after, delta=0.38)
    assert gain.significant and gain.delta == 0.38 and (gain.wins, gain.losses) == (40, 2)
    assert gain.low < 0.38 < gain.high
    noise = compare([0] + [1] * 99, [1] * 100, delta=0.01)
    assert not noise.significant


def test_graded_outcomes_hidden_loss_is_not_significant():
    """Many small gains and one large loss: the sign test sees a gain, the mean sees a loss."""
    before = [0.5] * 30 + [1.0] * 10
    after = [0.55] * 30 + [0.0] * 10
    diff = compare(before, after, delta=float(np.mean(after) - np.mean(before)))
    assert diff.wins > diff.losses and diff.high < 0
    assert not diff.significant


def test_without_outcomes_nothing_is_significant():
    diff = compare([], [], delta=-0.3)
    assert diff == Difference(-0.3, None, None, None, 0, 0)
    assert not diff.significant


def test_scale_maps_to_normalised_units():
    """chance 0.25: a raw interval (l, h) becomes (l, h) / 0.75."""
    before = [0] * 30 + [1] * 70
    after = [1] * 30 + [1] * 70
    raw = compare(before, after, delta=0.3)
    scaled = compare(before, after, delta=0.4, scale=1 / 0.75)
    assert scaled.low == pytest.approx(raw.low / 0.75) and scaled.high == pytest.approx(raw.high / 0.75)
