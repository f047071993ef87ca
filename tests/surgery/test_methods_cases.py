"""Small cases of each merge method, worked out by hand in each test's docstring, and the exact
order statistics behind the magnitude cut-offs (`surgery.merge.selection`) against `torch.sort`."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from surgery.merge.draws import Draws
from surgery.merge.methods import REGISTRY
from surgery.merge.selection import bin_of_rank, high_histogram, low_histogram, value_of_rank

NAME = "model.layers.0.mlp.up_proj.weight"


def merge(method: str, base, models, per_model=None, seed: int = 0, **shared) -> torch.Tensor:
    """Run `method` on whole tensors; per_model is a list of dicts, shared the global parameters."""
    m = REGISTRY[method]
    models = [torch.as_tensor(x, dtype=torch.float32) for x in models]
    per_model = [m.per_model.model_validate(p) for p in (per_model or [{}] * len(models))]
    base = None if base is None else torch.as_tensor(base, dtype=torch.float32)
    return m.merge_tensors(base, models, per_model, m.shared.model_validate(shared), seed=seed, name=NAME)


def assert_values(out: torch.Tensor, expected, tol: float = 1e-6) -> None:
    torch.testing.assert_close(out, torch.as_tensor(expected, dtype=torch.float32), rtol=tol, atol=tol)


# ---- linear, model_soup, task_arithmetic, passthrough ------------------------------------------------

def test_linear_normalized_is_a_weighted_mean():
    """a = [1, 2], b = [3, 6], weights 1 and 3: (1*1 + 3*3) / 4 = 2.5 and (1*2 + 3*6) / 4 = 5."""
    out = merge("linear", None, [[1, 2], [3, 6]], [{"weight": 1}, {"weight": 3}])
    assert_values(out, [2.5, 5.0])


def test_linear_without_normalize_is_a_weighted_sum():
    """The same inputs: 1*1 + 3*3 = 10 and 1*2 + 3*6 = 20."""
    out = merge("linear", None, [[1, 2], [3, 6]], [{"weight": 1}, {"weight": 3}], normalize=False)
    assert_values(out, [10.0, 20.0])


def test_linear_ignores_the_base():
    a = merge("linear", None, [[1, 2], [3, 6]], [{"weight": 1}, {"weight": 1}])
    b = merge("linear", [100, 100], [[1, 2], [3, 6]], [{"weight": 1}, {"weight": 1}])
    assert_values(a, [2.0, 4.0])
    assert torch.equal(a, b)


def test_model_soup_is_the_uniform_mean():
    """([0, 3] + [3, 6] + [6, 0]) / 3 = [3, 3]."""
    assert_values(merge("model_soup", None, [[0, 3], [3, 6], [6, 0]]), [3.0, 3.0])


def test_task_arithmetic_negative_weight_subtracts():
    """base [1, 1, 1]; task vectors d1 = [1, 0, 0], d2 = [0, 2, 0]; weights 1 and -0.5:
    base + d1 - 0.5 d2 = [2, 0, 1]. With lambda 0.5: base + 0.5 [1, -1, 0] = [1.5, 0.5, 1].
    With normalize the sum is divided by the weights' sum 0.5: base + [2, -2, 0] = [3, -1, 1]."""
    base, models, weights = [1, 1, 1], [[2, 1, 1], [1, 3, 1]], [{"weight": 1.0}, {"weight": -0.5}]
    assert_values(merge("task_arithmetic", base, models, weights), [2.0, 0.0, 1.0])
    assert_values(merge("task_arithmetic", base, models, weights, **{"lambda": 0.5}), [1.5, 0.5, 1.0])
    assert_values(merge("task_arithmetic", base, models, weights, normalize=True), [3.0, -1.0, 1.0])


def test_passthrough_scale():
    """[1, -2] scaled by 0.5 is [0.5, -1]; without a scale the tensor is copied."""
    assert_values(merge("passthrough", None, [[1, -2]], [{"scale": 0.5}]), [0.5, -1.0])
    assert_values(merge("passthrough", None, [[1, -2]]), [1.0, -2.0])


# ---- TIES --------------------------------------------------------------------------------------------

TIES_BASE = [1.0, 1.0, 1.0, 1.0]
TIES_MODELS = [  # base + d_i with
    [2.0, 1.1, -1.0, 1.2],   # d1 = [ 1, 0.1, -2, 0.2]   top half by |d|: [ 1, 0, -2, 0]
    [2.0, 4.0, 1.1, 0.8],    # d2 = [ 1, 3, 0.1, -0.2]   top half:        [ 1, 3,  0, 0]
    [-4.0, 1.3, 5.0, 1.1],   # d3 = [-5, 0.3, 4, 0.1]    top half:        [-5, 0,  4, 0]
]
DENSITY_HALF = [{"weight": 1.0, "density": 0.5}] * 3


def test_ties_trims_by_magnitude_and_elects_by_sum():
    """density 0.5 of 4 entries keeps k = 2: the cut-off is the |d| of ascending rank 4 - 2 = 2,
    e.g. for d1 sorted |d| = [0.1, 0.2, 1, 2] gives 1, so entries with |d| >= 1 stay (trimmed above).
    Election by summed mass: column sums [-3, 3, 2, 0] elect signs [-, +, +, +] (0 counts as +).
    Agreeing entries: col 0 only d3 (-5); col 1 only d2 (3); col 2 only d3 (4, d1's -2 disagrees);
    col 3 none (trimmed zeros have no sign). Normalized by the agreeing weights (1 each, 0 -> 1):
    base + [-5, 3, 4, 0] = [-4, 4, 5, 1]."""
    out = merge("ties", TIES_BASE, TIES_MODELS, DENSITY_HALF)
    assert_values(out, [-4.0, 4.0, 5.0, 1.0])


def test_ties_keeps_exactly_k_when_magnitudes_tie_at_the_cut():
    """delta = [3, -2, 2, 2, 1] over base 0, one model, weight 1, density 0.6: k = int(0.6 * 5) = 3.
    The cut-off magnitude is 2, held by three entries; one entry (3) is above it, so 2 of the 3 ties
    are kept, the first two in row-major order: [3, -2, 2, 0, 0]. Split over rows, the same holds."""
    flat = merge("ties", [0, 0, 0, 0, 0], [[3, -2, 2, 2, 1]], [{"weight": 1, "density": 0.6}])
    assert_values(flat, [3, -2, 2, 0, 0])
    rows = merge("ties", [[0], [0], [0], [0], [0]], [[[3], [-2], [2], [2], [1]]], [{"weight": 1, "density": 0.6}])
    assert_values(rows.flatten(), [3, -2, 2, 0, 0])


def test_ties_election_by_count():
    """Election by count of signs: column sign sums [+1+1-1, +1, -1+1, 0] = [1, 1, 0, 0] elect
    [+, +, +, +]. Col 0: d1 and d2 agree (1 + 1) / 2 = 1; col 1: 3; col 2: d3's 4; col 3: 0.
    base + [1, 3, 4, 0] = [2, 4, 5, 1]; without normalize col 0 is 1 + 1 = 2: [3, 4, 5, 1]."""
    out = merge("ties", TIES_BASE, TIES_MODELS, DENSITY_HALF, consensus="count")
    assert_values(out, [2.0, 4.0, 5.0, 1.0])
    out = merge("ties", TIES_BASE, TIES_MODELS, DENSITY_HALF, consensus="count", normalize=False)
    assert_values(out, [3.0, 4.0, 5.0, 1.0])


def test_ties_weights_and_lambda():
    """Weights 2, 1, 1 with sum election: weighted columns 2*[1, 0, -2, 0] + [1, 3, 0, 0] + [-5, 0, 4, 0]
    sum to [-2, 3, 0, 0]: signs [-, +, +, +]. Col 0: only -5 agrees, weight 1 -> -5; col 1: 3;
    col 2: 4 (weight 1; d1's -4 disagrees); col 3: 0. lambda 0.5 halves the step:
    base + 0.5 [-5, 3, 4, 0] = [-1.5, 2.5, 3, 1]."""
    weights = [{"weight": 2.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = merge("ties", TIES_BASE, TIES_MODELS, weights, **{"lambda": 0.5})
    assert_values(out, [-1.5, 2.5, 3.0, 1.0])


def test_ties_density_one_keeps_everything():
    """No trimming: col 0 sum -3 elects -, only d3 (-5) agrees -> -5; col 1 all positive:
    (0.1 + 3 + 0.3) / 3; col 2 sum 2.1 elects +: (0.1 + 4) / 2; col 3 sum 0.1 elects +:
    (0.2 + 0.1) / 2."""
    out = merge("ties", TIES_BASE, TIES_MODELS, [{"weight": 1.0}] * 3)
    assert_values(out, [1 - 5.0, 1 + 3.4 / 3, 1 + 4.1 / 2, 1 + 0.3 / 2], tol=1e-5)


# ---- DARE --------------------------------------------------------------------------------------------

def test_dare_keep_rate_and_mask_from_the_tensor_draws():
    """100,000 entries, density 0.3, no rescale: each task-vector entry survives where its Bernoulli
    draw (`Draws.keep`, seeded by seed and tensor name) is 1; the kept share is 0.3 within
    4 sigma = 4 sqrt(0.3 * 0.7 / 1e5) = 0.0058."""
    shape = (200, 500)
    delta = torch.linspace(0.5, 1.5, 100_000).reshape(shape)
    out = merge("dare_linear", torch.zeros(shape), [delta], [{"weight": 1.0, "density": 0.3}], seed=4, rescale=False)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.0058
    expected = Draws(4, NAME, shape, 1).keep(0, (0, shape[0]), 0.3).reshape(shape) == 1
    assert torch.equal(kept, expected)
    assert torch.equal(out[kept], delta[kept])


def test_dare_rescale_restores_the_l1_norm():
    """With rescale the survivors are multiplied by |d|_1 / |kept d|_1, so the result's L1 norm equals
    the task vector's: here sum |d| over linspace(0.5, 1.5) = 1e5 * 1 = 100,000 (mean 1)."""
    shape = (200, 500)
    delta = torch.linspace(0.5, 1.5, 100_000).reshape(shape) * torch.tensor([1.0, -1.0]).repeat(250)
    out = merge("dare_linear", torch.zeros(shape), [delta], [{"weight": 1.0, "density": 0.3}], seed=4)
    plain = merge("dare_linear", torch.zeros(shape), [delta], [{"weight": 1.0, "density": 0.3}], seed=4, rescale=False)
    assert out.abs().sum(dtype=torch.float64).item() == pytest.approx(100_000, rel=1e-5)
    factor = 100_000 / plain.abs().sum(dtype=torch.float64).item()
    assert 1 / 0.3 * 0.97 < factor < 1 / 0.3 * 1.03  # 1/density in expectation
    torch.testing.assert_close(out, plain * factor)


def test_dare_ties_elects_after_dropping():
    """Task vectors [+1] * n and [-2] * n, density 1 (nothing dropped): the summed mass -1 elects -,
    so every entry is base - 2 (dare_ties does not normalize by default). With density 0.5 and no
    rescale, an entry is -2 where the second survives, +1 where only the first does, else 0."""
    n = 1000
    base = torch.zeros(n)
    out = merge("dare_ties", base, [torch.ones(n), -2 * torch.ones(n)], [{"weight": 1.0}] * 2)
    assert_values(out, -2 * torch.ones(n))
    out = merge("dare_ties", base, [torch.ones(n), -2 * torch.ones(n)], [{"weight": 1.0, "density": 0.5}] * 2,
                seed=1, rescale=False)
    keep = [Draws(1, NAME, (n,), 2).keep(i, (0, 1), 0.5) == 1 for i in range(2)]
    expected = torch.where(keep[1], -2.0, torch.where(keep[0], 1.0, 0.0))
    assert_values(out, expected)


# ---- Breadcrumbs -------------------------------------------------------------------------------------

def test_breadcrumbs_drops_small_entries_and_outliers():
    """10 entries d = [-1, 2, -3, ..., 10], density 0.5, gamma 0.2: keep 5, drop the int(0.2 * 10) = 2
    largest and the 10 - 5 - 2 = 3 smallest by |d|: |d| in {4, 5, 6, 7, 8} survive."""
    d = torch.tensor([(-1) ** i * i for i in range(1, 11)], dtype=torch.float32)
    out = merge("breadcrumbs", torch.full((10,), 2.0), [2.0 + d], [{"weight": 1.0, "density": 0.5, "gamma": 0.2}])
    assert_values(out, 2.0 + torch.tensor([0, 0, 0, 4, -5, 6, -7, 8, 0, 0], dtype=torch.float32))


def test_breadcrumbs_without_outliers_is_magnitude_trim():
    """gamma 0: the 5 largest |d| (6 .. 10) survive, as in TIES's trim."""
    d = torch.arange(1.0, 11.0)
    out = merge("breadcrumbs", torch.zeros(10), [d], [{"weight": 1.0, "density": 0.5, "gamma": 0.0}])
    assert_values(out, [0, 0, 0, 0, 0, 6, 7, 8, 9, 10])


def test_breadcrumbs_ties_elects_signs():
    """Two models, d1 = [1..10], d2 = -2 d1, density 0.5, gamma 0.2: each keeps |d| ranks 3..7, i.e.
    positions 3..7 (0-based). There the summed mass d1 - 2 d1 < 0 elects -, so d2 alone (normalize
    false: not divided) gives -2 * [4, 5, 6, 7, 8]."""
    d = torch.arange(1.0, 11.0)
    p = {"weight": 1.0, "density": 0.5, "gamma": 0.2}
    out = merge("breadcrumbs_ties", torch.zeros(10), [d, -2 * d], [p, p])
    assert_values(out, [0, 0, 0, -8, -10, -12, -14, -16, 0, 0])


# ---- SLERP -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t, expected", [
    (0.0, [2.0, 0.0]),
    (1.0, [0.0, 2.0]),
    (0.5, [math.sqrt(2), math.sqrt(2)]),
    (1 / 3, [math.sqrt(3), 1.0]),
])
def test_slerp_on_orthogonal_vectors(t, expected):
    """a = [2, 0], b = [0, 2]: cos = 0, theta = pi/2, sin(theta) = 1, so the coefficients are
    sin((1 - t) pi/2) and sin(t pi/2). t = 0 gives a, t = 1 gives b; t = 0.5: both sin(pi/4) = 0.7071,
    [1.4142, 1.4142] (on the circle of radius 2, where lerp would give [1, 1]); t = 1/3:
    sin(pi/3) = 0.8660 and sin(pi/6) = 0.5, [1.7321, 1]."""
    assert_values(merge("slerp", [2, 0], [[0, 2]], t=t), expected)


def test_slerp_colinear_falls_back_to_lerp():
    """b = 2a: cos = 1 > 0.9995, so (1 - t) a + t b; at t = 0.25: 0.75 [1, 2] + 0.25 [2, 4] = [1.25, 2.5].
    Opposite vectors (cos = -1) also interpolate linearly: t = 0.5 between [1, 2] and [-1, -2] is 0."""
    assert_values(merge("slerp", [1, 2], [[2, 4]], t=0.25), [1.25, 2.5])
    assert_values(merge("slerp", [1, 2], [[-1, -2]], t=0.5), [0.0, 0.0])


def test_slerp_at_60_degrees_scales_by_sines():
    """a = [1, 0], b = [0.5, sqrt(3)/2]: theta = pi/3, sin(theta) = sqrt(3)/2; at t = 0.5 both
    coefficients are sin(pi/6) / sin(pi/3) = 0.5 / 0.8660 = 0.5774: 0.5774 * [1.5, 0.8660] =
    [0.8660, 0.5], the unit vector at 30 degrees."""
    out = merge("slerp", [1, 0], [[0.5, math.sqrt(3) / 2]], t=0.5)
    assert_values(out, [math.sqrt(3) / 2, 0.5])


# ---- Model Stock -------------------------------------------------------------------------------------

def test_model_stock_two_models():
    """Task vectors d1 = [1, 1, 0], d2 = [1, 0, 1]: |d| = sqrt 2 each, d1.d2 = 1, cos = 0.5.
    t = N cos / (1 + (N - 1) cos) = 2 * 0.5 / 1.5 = 2/3; the average task vector is [1, 0.5, 0.5],
    so base + t * avg = [1, 2, 3] + [2/3, 1/3, 1/3]."""
    base = torch.tensor([1.0, 2.0, 3.0])
    out = merge("model_stock", base, [base + torch.tensor([1.0, 1, 0]), base + torch.tensor([1.0, 0, 1])])
    assert_values(out, base + torch.tensor([2 / 3, 1 / 3, 1 / 3]))


def test_model_stock_three_models():
    """[1, 1, 0], [1, 0, 1], [0, 1, 1]: every pair has cos 0.5, so t = 3 * 0.5 / (1 + 2 * 0.5) = 0.75;
    the average task vector is [2/3, 2/3, 2/3]; base + 0.75 * 2/3 = base + 0.5 everywhere."""
    base = torch.tensor([1.0, 2.0, 3.0])
    ds = [torch.tensor(v) for v in ([1.0, 1, 0], [1.0, 0, 1], [0.0, 1, 1])]
    assert_values(merge("model_stock", base, [base + d for d in ds]), base + 0.5)


def test_model_stock_opposite_updates_keep_the_base():
    """d2 = -d1: cos = -1, 1 + (N - 1) cos = 0, so t is set to 0 rather than divided by zero."""
    base = torch.tensor([1.0, 2.0, 3.0])
    d = torch.tensor([1.0, -1.0, 2.0])
    assert_values(merge("model_stock", base, [base + d, base - d]), base)


def test_model_stock_filter_wise_per_row():
    """Row 0 as in the two-model case (t = 2/3, average [1, 0.5, 0.5]); row 1 has orthogonal task
    vectors [1, 0, 0] and [0, 1, 0] (cos 0, t = 0), so row 1 stays the base. Tensor-wide instead:
    d1 = [1, 1, 0, 1, 0, 0], d2 = [1, 0, 1, 0, 1, 0], |d|^2 = 3 each, d1.d2 = 1, cos = 1/3,
    t = 2/3 / (4/3) = 0.5 on the average [1, .5, .5, .5, .5, 0]."""
    base = torch.zeros(2, 3)
    d1 = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    d2 = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    out = merge("model_stock", base, [d1, d2], filter_wise=True)
    assert_values(out, [[2 / 3, 1 / 3, 1 / 3], [0, 0, 0]])
    out = merge("model_stock", base, [d1, d2])
    assert_values(out, [[0.5, 0.25, 0.25], [0.25, 0.25, 0]])


# ---- DELLA -------------------------------------------------------------------------------------------

def test_della_keep_probability_rises_with_magnitude_rank():
    """Rows of 5 entries with |d| = 1 .. 5 (signs alternating), density 0.5, epsilon 0.2: the keep
    probability of rank r in 0..4 is 0.5 - 0.2 + r / 4 * 0.4 = [0.3, 0.4, 0.5, 0.6, 0.7]. Over 4,000
    rows each column's kept share is within 4 sigma = 4 sqrt(0.25 / 4000) = 0.032 of it, and the mask
    is exactly `draw < probability`."""
    rows = 4000
    d = torch.tensor([[1.0, -2, 3, -4, 5]]).repeat(rows, 1)
    d[1::2] = d[1::2].flip(1)  # odd rows: largest first, so rank is not tied to the column
    out = merge("della_linear", torch.zeros(rows, 5), [d], [{"weight": 1.0, "density": 0.5, "epsilon": 0.2}],
                seed=9, rescale=False)
    kept = out != 0
    probs = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7])
    rank = d.abs().long() - 1  # |d| = rank + 1
    for r in range(5):
        share = kept[rank == r].float().mean().item()
        assert abs(share - probs[r].item()) < 0.032, (r, share)
    draws = Draws(9, NAME, (rows, 5), 1).uniform(0, (0, rows)).reshape(rows, 5)
    assert torch.equal(kept, draws < probs[rank])
    assert torch.equal(out[kept], d[kept])


def test_della_rescale_and_lambda():
    """One model: sign election keeps every surviving entry, normalize divides by weight 1, rescale
    restores |d|_1 = 4000 * (1 + 2 + 3 + 4 + 5) = 60,000, lambda 0.5 halves it: |out|_1 = 30,000."""
    rows = 4000
    d = torch.tensor([[1.0, -2, 3, -4, 5]]).repeat(rows, 1)
    out = merge("della", torch.zeros(rows, 5), [d], [{"weight": 1.0, "density": 0.5, "epsilon": 0.2}],
                seed=9, **{"lambda": 0.5})
    assert out.abs().sum(dtype=torch.float64).item() == pytest.approx(30_000, rel=1e-5)


# ---- exact order statistics --------------------------------------------------------------------------

def order_statistic(blocks: list[torch.Tensor], rank: int) -> float:
    """|x| at ascending `rank` over all blocks, with the two histogram passes the engine runs."""
    high = sum(high_histogram(b) for b in blocks)
    b = bin_of_rank(high, rank)
    low = sum(low_histogram(x, b) for x in blocks)
    return value_of_rank(high, low, b, rank)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**31), blocks=st.integers(1, 5),
       scale=st.sampled_from([1e-40, 1e-3, 1.0, 1e20]), zeros=st.floats(0, 0.5), ties=st.floats(0, 0.5))
def test_order_statistics_equal_sort(n, seed, blocks, scale, zeros, ties):
    """Random values with some zeros (+0 and -0), repeated magnitudes of both signs and, at 1e-40,
    subnormals: every probed rank equals torch.sort's value, whatever the split into blocks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * scale
    x[torch.rand(n, generator=g) < zeros] = 0.0
    x[torch.rand(n, generator=g) < zeros / 2] = -0.0
    tie = torch.rand(n, generator=g) < ties
    x[tie] = torch.where(torch.rand(n, generator=g) < 0.5, 0.5, -0.5)[tie] * scale
    ref = torch.sort(x.abs()).values
    parts = list(torch.tensor_split(x, blocks))
    for rank in {0, n - 1, n // 2, n // 3, int(torch.randint(n, (1,), generator=g))}:
        assert order_statistic(parts, rank) == ref[rank].item(), rank


def test_order_statistics_on_a_2d_tensor_and_all_ties():
    x = torch.tensor([[3.0, -1.0, 2.0], [-3.0, 0.0, 1.0]])
    assert [order_statistic([x], r) for r in range(6)] == [0.0, 1.0, 1.0, 2.0, 3.0, 3.0]
    same = torch.full((1000,), -0.25)
    assert {order_statistic([same[:300], same[300:]], r) for r in (0, 500, 999)} == {0.25}
