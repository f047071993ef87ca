"""The methods mergekit 0.1.5 added after the task-vector family (nuslerp, multislerp, karcher, sce,
arcee_fusion, nearswap, ram, ramplus_tl) equal mergekit's on float32 configs, with per-layer
gradients and filters, whole and blocked (statistics summed over many blocks).

Entry-by-entry methods and those whose statistics are exact (integer counts, order statistics) are
equal to the last bit. Where a method reduces the whole tensor to float sums (norms, dot products,
mean squares), ours are float64 sums over blocks and mergekit's float32 sums over the tensor, so the
outputs agree to a few float32 ulps (CLOSE).
"""

from __future__ import annotations

import pytest
import torch
from mergekit import merge_methods as mk_methods

from surgery.errors import NumericsError, SpecError
from surgery.merge.methods import REGISTRY
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from tests.surgery.new_method_cases import CASES, config
from tests.surgery.test_mergekit_parity import TINY_BLOCK, assert_same_layout, entry, run_mergekit, run_ours

CLOSE = {  # float sums over the whole tensor (see the module's docstring)
    "nuslerp": "whole-tensor norms and dot product", "nuslerp_columns": "per-column norms and dot products",
    "nuslerp_base_columns": "per-column norms and dot products",
    "multislerp": "Gram matrix", "multislerp_no_base": "Gram matrix", "karcher": "Gram matrix",
    "karcher_base_input": "Gram matrix", "sce": "mean squares", "sce_gradient": "mean squares",
}


@pytest.fixture(scope="module")
def theirs(llama, tmp_path_factory):
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(case: str) -> dict[str, torch.Tensor]:
        if case not in cache:
            cache[case] = run_mergekit(CASES[case](llama), str(tmp_path_factory.mktemp(case) / "merged"))
        return cache[case]

    return get


def assert_matches(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], exact: bool) -> None:
    assert_same_layout(ours, theirs)
    for name, t in theirs.items():
        if exact:
            assert torch.equal(ours[name], t), f"{name}: max |diff| {(ours[name] - t).abs().max():.3g}"
        else:  # a few float32 ulps of the output
            torch.testing.assert_close(ours[name], t, rtol=2e-6, atol=1e-8, msg=name)


@pytest.mark.integration
@pytest.mark.parametrize("block_bytes", [None, TINY_BLOCK], ids=["whole", "blocked"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_equals_mergekit(llama, theirs, tmp_path, case, block_bytes):
    ours = run_ours(CASES[case](llama), str(tmp_path / "ours"), block_bytes)
    assert_matches(ours, theirs(case), exact=case not in CLOSE)


@pytest.mark.integration
def test_cases_change_the_model(llama, theirs):
    """Each case's output differs from every input somewhere: the parameters chosen do something."""
    from tests.surgery.test_mergekit_parity import load_all

    inputs = [load_all(llama[k]) for k in ("base", "math", "code", "chat")]
    for case in CASES:
        out = theirs(case)
        assert all(any(not torch.equal(out[n], m[n]) for n in out) for m in inputs), case


# ---- on tensors, inputs far apart (the fixtures' fine-tunes are near their base) -------------------

def spread(n: int, shape=(96, 40), seed: int = 0) -> list[torch.Tensor]:
    """Independent tensors of different norms, one a mix of two others: directions far apart."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(shape, generator=g) * (1 + i) for i in range(n)]
    if n > 2:
        out[2] = out[2] + 2 * out[0]
    return out


def ours_on(method: str, base, models, per_model: list[dict], shared: dict) -> torch.Tensor:
    m = REGISTRY[method]
    return m.merge_tensors(base, models, [m.per_model.model_validate(p) for p in per_model],
                           m.shared.model_validate(shared))


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("max_iter,tol", [(0, 1e-5), (3, 1e-5), (10, 1e-5), (100, 1e-8), (10, 0.5)])
def test_karcher_iterations_equal_mergekit(n, max_iter, tol):
    """Directions far apart, so the Riemannian steps (and a few stopping rules) matter."""
    models = spread(n)
    theirs = mk_methods.merge_tensors(models, "karcher", parameters={"max_iter": max_iter, "tol": tol})
    ours = ours_on("karcher", None, models, [{}] * n, {"max_iter": max_iter, "tol": tol})
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    plain = ours_on("karcher", None, models, [{}] * n, {"max_iter": 0, "tol": tol})
    if n > 2 and max_iter >= 3 and tol < 1e-3:  # the steps moved the mean off the normalised average
        # (for two inputs of equal weight that average is already the geodesic midpoint)
        assert (ours - plain).abs().max() > 1e-3


def test_karcher_leaves_out_small_inputs_like_mergekit():
    models = spread(3)
    models[1] = models[1] * 1e-7  # norm below tol: no part in the direction, its norm still in the scale
    theirs = mk_methods.merge_tensors(models, "karcher", parameters={"tol": 1e-4})
    torch.testing.assert_close(ours_on("karcher", None, models, [{}] * 3, {"tol": 1e-4}), theirs, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("with_base", [False, True])
def test_multislerp_far_apart_equals_mergekit(with_base):
    *models, last = spread(4)
    base = last if with_base else None
    weights = [0.5, 0.2, 0.3]
    inputs = ([base] if with_base else []) + models
    theirs = mk_methods.merge_tensors(inputs, "multislerp", parameters={"weight": weights},
                                      base_index=0 if with_base else None)
    ours = ours_on("multislerp", base, models, [{"weight": w} for w in weights], {})
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)


def test_multislerp_two_opposite_inputs_fall_back_to_linear_like_mergekit():
    a = spread(1)[0]
    theirs = mk_methods.merge_tensors([a, -a], "multislerp", parameters={"weight": [0.5, 0.5]})
    ours = ours_on("multislerp", None, [a, -a], [{"weight": 0.5}] * 2, {})
    assert torch.equal(ours, theirs) and torch.equal(ours, torch.zeros_like(a))


def test_multislerp_refuses_directions_that_cancel_like_mergekit():
    a = spread(1)[0]
    models, per_model = [a, -a, a.flip(0)], [{"weight": 1.0}, {"weight": 1.0}, {"weight": 0.0}]
    with pytest.raises(ValueError, match="weighted sum of the input tensors is zero"):
        mk_methods.merge_tensors(models, "multislerp", parameters={"weight": [1.0, 1.0, 0.0]})
    with pytest.raises(NumericsError, match="directions is zero"):
        ours_on("multislerp", None, models, per_model, {})


def test_multislerp_refuses_weights_summing_to_zero_at_planning(llama):
    spec = config("multislerp", llama, [entry(llama["math"], weight=[1.0, 0.5]), entry(llama["code"], weight=-0.5)])
    with pytest.raises(SpecError, match=r"models: multislerp: the weights sum to zero.* \(tensor 'model.layers.1"):
        plan_merge(parse_spec(spec), "spec.yaml")


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("weights", [(0.6, 0.4), (-0.5, 0.5), (2.0, -0.5)])
def test_nuslerp_far_apart_equals_mergekit(flatten, row_wise, weights):
    """Weights summing to zero interpolate at t = 0.5; a negative weight extrapolates."""
    base, a, b = spread(3, shape=(40, 24))
    params = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
    theirs = mk_methods.merge_tensors([base, a, b], "nuslerp", parameters={**params, "weight": list(weights)},
                                      base_index=0)
    ours = ours_on("nuslerp", base, [a, b], [{"weight": w} for w in weights], params)
    if flatten or row_wise:
        torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    else:
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("topk", [0.0, 0.05, 0.5, 1.0])
def test_sce_on_large_task_vectors_equals_mergekit(topk):
    """Task vectors large enough that the energy weights are not the equal-weight fallback."""
    base, *models = spread(4, shape=(64, 48))
    theirs = mk_methods.merge_tensors([base, *models], "sce", parameters={"select_topk": topk}, base_index=0)
    ours = ours_on("sce", base, models, [{}] * 3, {"select_topk": topk})
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)


def test_sce_selects_exactly_k_among_tied_variances():
    """One task vector x of few distinct values and one zero one: the variance is x^2 / 4, many entries
    tie at the cut-off, the zero task vector is erased everywhere, so the output changes exactly the
    k = int(nonzero * select_topk) selected entries. mergekit's top-k also keeps exactly k; the two
    pick different tied entries (its sort order, our row-major order) and agree everywhere else."""
    g = torch.Generator().manual_seed(3)
    base = torch.zeros(50, 40)  # task vectors exactly x and 0
    x = torch.randint(-2, 3, (50, 40), generator=g).float() * 0.25
    models, topk = [base + x, base.clone()], 0.37
    ours = ours_on("sce", base, models, [{}] * 2, {"select_topk": topk})
    theirs = mk_methods.merge_tensors([base, *models], "sce", parameters={"select_topk": topk}, base_index=0)
    k = int(torch.count_nonzero(x) * topk)
    cut = x.abs().flatten().sort(descending=True).values[k - 1]
    assert int((x.abs() > cut).sum()) < k < int((x.abs() >= cut).sum())  # the cut-off falls inside a tie
    for out in (ours, theirs):
        assert int((out != base).sum()) == k
    away = x.abs() != cut
    assert torch.equal(ours[away], theirs[away])
    tied = (x.abs() == cut).flatten().nonzero().flatten()
    quota = k - int((x.abs() > cut).sum())
    changed = (ours != base).flatten()
    assert changed[tied[:quota]].all() and not changed[tied[quota:]].any()  # the first ties in row order


@pytest.mark.parametrize("shape", [(64, 48), (48,), (7, 3, 4), (3000, 400)])
def test_arcee_fusion_equals_mergekit(shape):
    """Exact quartiles; at 1.2M entries mergekit samples a million of them with replacement, so there
    the fence (and a few kept entries) may differ."""
    g = torch.Generator().manual_seed(sum(shape))
    base = torch.randn(shape, generator=g)
    model = base + 0.1 * torch.randn(shape, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = mk_methods.merge_tensors([base, model], "arcee_fusion", base_index=0)
    ours = ours_on("arcee_fusion", base, [model], [{}], {})
    if base.numel() <= 1_000_000:
        assert torch.equal(ours, theirs)
    else:
        differ = (ours != theirs).float().mean()
        assert differ < 2e-3, float(differ)


@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (5, 7), (9,)])
def test_model_stock_filters_are_last_axis_vectors_like_mergekit(shape):
    """filter_wise takes a cosine per vector along the last axis (a conv kernel's rows of w), as mergekit."""
    base, *models = spread(4, shape=shape)
    theirs = mk_methods.merge_tensors([base, *models], "model_stock", parameters={"filter_wise": True}, base_index=0)
    ours = ours_on("model_stock", base, models, [{}] * 3, {"filter_wise": True})
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_sce_variance_has_torch_vars_bits(n):
    """SCE selects by the float32 bits of torch.var over the stacked task vectors (mergekit's); ours,
    one model at a time, gives the same bits, ties and wide ranges included."""
    from surgery.merge.methods.sce import welford_variance

    g = torch.Generator().manual_seed(n)
    xs = [torch.randn(300, 200, generator=g) * 10.0 ** (i - 2) for i in range(n)]
    xs[0][:10] = (torch.randint(-3, 4, (10, 200), generator=g) * 0.25).float()
    assert torch.equal(welford_variance(xs), torch.var(torch.stack(xs), dim=0, unbiased=False))
