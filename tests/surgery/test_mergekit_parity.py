"""Merge outputs equal mergekit 0.1.5's on the same configs (mergekit is a dev dependency).

Both engines run in-process on the tiny fixture families with `dtype: float32` (mergekit computes in
the config dtype; we compute in float32 and cast). Deterministic methods are compared tensor by
tensor: the same names, shapes, dtypes and values. DARE and DELLA draw their masks from different
random streams (mergekit from torch's global generator, we from a generator per tensor and seed), so
they are compared in distribution: how many task-vector entries survive, the L1 rescale of the
survivors, and DELLA's keep rate by magnitude rank.
"""

from __future__ import annotations

import glob
import math

import pytest
import torch
from mergekit import merge_methods as mk_methods
from mergekit import sparsify as mk_sparsify
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge as mergekit_run_merge
from mergekit.options import MergeOptions
from safetensors.torch import load_file

from surgery.merge.engine import Options, run_merge
from surgery.merge.methods import REGISTRY
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec

TINY_BLOCK = 4096  # bytes: a handful of rows per block, so every statistics stage spans many blocks


# ---- running both engines ------------------------------------------------------------------------

def load_all(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, over all its shards."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(glob.glob(f"{folder}/*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def run_mergekit(config: dict, out: str, torch_seed: int = 0) -> dict[str, torch.Tensor]:
    """mergekit's merge of `config`; its random methods draw from torch's global generator, so
    that is seeded here and restored afterwards."""
    options = MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        mergekit_run_merge(MergeConfiguration.model_validate(config), out, options)
    return load_all(out)


def run_ours(config: dict, out: str, block_bytes: int | None = None) -> dict[str, torch.Tensor]:
    options = Options() if block_bytes is None else Options(block_bytes=block_bytes)
    return load_all(run_merge(plan_merge(parse_spec(config), "spec"), out, options))


def assert_same_layout(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, theirs_t in theirs.items():
        assert ours[name].shape == theirs_t.shape, name
        assert ours[name].dtype == theirs_t.dtype, name


def assert_equal_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], exact: bool) -> None:
    assert_same_layout(ours, theirs)
    for name, theirs_t in theirs.items():
        if exact:
            assert torch.equal(ours[name], theirs_t), f"{name}: max |diff| {(ours[name] - theirs_t).abs().max():.3g}"
        else:
            # a few float32 ulps (rtol 1e-6 is ~8 ulps): see REDUCTIONS for why the last bits differ
            torch.testing.assert_close(ours[name], theirs_t, rtol=1e-6, atol=1e-9, msg=name)


# ---- the configs -----------------------------------------------------------------------------------

def entry(path: str, **params) -> dict:
    return {"model": path, "parameters": params} if params else {"model": path}


def with_base(method: str, f: dict, models: list[dict], **params) -> dict:
    return {"merge_method": method, "base_model": f["base"], "models": models, "parameters": params}


CASES = {
    "linear": lambda f: {"merge_method": "linear", "models": [
        entry(f["math"], weight=0.5), entry(f["code"], weight=0.3), entry(f["chat"], weight=0.2)]},
    "linear_unnormalized": lambda f: {"merge_method": "linear", "parameters": {"normalize": False}, "models": [
        entry(f["math"], weight=0.7), entry(f["code"], weight=0.6)]},
    "task_arithmetic": lambda f: with_base("task_arithmetic", f, [
        entry(f["math"], weight=0.8), entry(f["code"], weight=-0.4)], **{"lambda": 1.3}),
    "task_arithmetic_normalized": lambda f: with_base("task_arithmetic", f, [
        entry(f["math"], weight=0.8), entry(f["code"], weight=0.4)], normalize=True),
    "ties": lambda f: with_base("ties", f, [
        entry(f["math"], weight=0.6, density=0.4), entry(f["code"], weight=0.4, density=0.6),
        entry(f["chat"], weight=0.3, density=0.3)], int8_mask=True),
    "ties_gradient_filter": lambda f: with_base("ties", f, [
        entry(f["math"], weight=[0.2, 0.8], density=0.5),
        entry(f["code"], weight=0.5, density=[{"filter": "self_attn", "value": 0.3}, {"value": 0.8}])],
        normalize=False),
    "ties_rescale": lambda f: with_base("ties", f, [
        entry(f["math"], weight=0.6, density=0.4), entry(f["code"], weight=0.4, density=0.6)], rescale=True),
    "ties_slices": lambda f: {"merge_method": "ties", "base_model": f["base"], "slices": [
        {"sources": [{"model": f["base"], "layer_range": [0, 2]},
                     {"model": f["math"], "layer_range": [0, 2], "parameters": {"weight": [0.3, 0.9], "density": 0.5}}],
         "parameters": {"normalize": False}},
        {"sources": [{"model": f["base"], "layer_range": [1, 2]},
                     {"model": f["code"], "layer_range": [1, 2]}],
         "parameters": {"weight": 0.5, "density": 0.7}}]},
    "breadcrumbs": lambda f: with_base("breadcrumbs", f, [
        entry(f["math"], weight=0.6, density=0.5, gamma=0.05), entry(f["code"], weight=0.4, density=0.7)]),
    "breadcrumbs_ties": lambda f: with_base("breadcrumbs_ties", f, [
        entry(f["math"], weight=0.6, density=0.5, gamma=0.05), entry(f["code"], weight=0.4, density=0.7, gamma=0.02)]),
    "slerp": lambda f: with_base("slerp", f, [entry(f["math"])], t=0.3),
    "slerp_gradient_filters": lambda f: with_base("slerp", f, [entry(f["math"])], t=[
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]),
    "model_stock": lambda f: with_base("model_stock", f, [entry(f["math"]), entry(f["code"]), entry(f["chat"])]),
    "model_stock_filter_wise": lambda f: with_base("model_stock", f, [
        entry(f["math"]), entry(f["code"]), entry(f["chat"])], filter_wise=True),
    "passthrough_slices": lambda f: {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": f["math"], "layer_range": [0, 2]}]},
        {"sources": [{"model": f["code"], "layer_range": [1, 2]}]}]},
    "passthrough_scale": lambda f: {"merge_method": "passthrough", "models": [
        entry(f["math"], scale=[{"filter": "o_proj", "value": 0.5}, {"filter": "mlp", "value": [2.0, -1.0]},
                                {"value": 1.0}])]},
}

# Equal to the last bit except where the engines reduce floats in a different order or precision
# (ours accumulates tensor-wide statistics in float64 block by block; mergekit in float32 at once).
# The measured differences are 1 ulp of the output.
REDUCTIONS = {
    "ties_rescale": "L1 norms of the trimmed task vectors: float64 sums over blocks vs one float32 sum",
    "slerp": "norms and dot product: float64 sums and Python-float coefficients vs float32 tensors",
    "slerp_gradient_filters": "as slerp",
    "model_stock": "task-vector norms and dot products: float64 sums over blocks vs float32",
}
FAMILY_CASES = ("ties", "slerp", "linear")


def spec_of(case: str, family: dict[str, str]) -> dict:
    return {**CASES[case](family), "dtype": "float32"}


@pytest.fixture(scope="module")
def mergekit_out(tmp_path_factory):
    """mergekit's output tensors per (family, case), computed once for the module."""
    cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def get(family_name: str, family: dict[str, str], case: str) -> dict[str, torch.Tensor]:
        if (family_name, case) not in cache:
            out = tmp_path_factory.mktemp(f"mergekit-{family_name}-{case}")
            cache[family_name, case] = run_mergekit(spec_of(case, family), str(out / "merged"))
        return cache[family_name, case]

    return get


# ---- deterministic methods: equal tensors -------------------------------------------------------------

@pytest.mark.parametrize("block_bytes", [None, TINY_BLOCK], ids=["whole", "blocked"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.integration
def test_llama_merge_equals_mergekit(llama, mergekit_out, tmp_path, case, block_bytes):
    """Every method and parameter form on the Llama family; blocked runs give the same result."""
    ours = run_ours(spec_of(case, llama), str(tmp_path / "ours"), block_bytes)
    assert_equal_tensors(ours, mergekit_out("llama", llama, case), exact=case not in REDUCTIONS)


@pytest.mark.parametrize("case", FAMILY_CASES)
@pytest.mark.parametrize("family_name", ["qwen2", "gpt2", "llama_sharded"])
@pytest.mark.integration
def test_other_families_equal_mergekit(request, mergekit_out, tmp_path, family_name, case):
    """Qwen2 (attention biases), GPT-2 (Conv1D, tied embeddings: no lm_head) and sharded inputs."""
    family = request.getfixturevalue(family_name)
    ours = run_ours(spec_of(case, family), str(tmp_path / "ours"))
    assert_equal_tensors(ours, mergekit_out(family_name, family, case), exact=case not in REDUCTIONS)


# ---- magnitude ties at the cut-off ------------------------------------------------------------------------

def bf16_ties_spec(f: dict[str, str]) -> dict:
    """One task vector, weight 1, no normalization: the output is base + the kept entries."""
    return {"merge_method": "ties", "base_model": f["base"], "dtype": "float32", "parameters": {"normalize": False},
            "models": [entry(f["math"], weight=1.0, density=0.5)]}


def test_ties_cutoff_keeps_exactly_k_like_mergekit(llama_bf16, tmp_path):
    """bfloat16 inputs give task vectors with many exactly equal magnitudes. Both engines keep
    exactly k = int(density * n) entries: all above the cut-off magnitude and as many of those tied
    with it as fit. Among the tied ones mergekit picks by its argsort's order, we pick the first in
    row-major order (the same whatever the blocking). So the outputs agree on every entry away from
    the cut-off magnitude, both change exactly k entries, and ours keeps the earliest ties."""
    spec = bf16_ties_spec(llama_bf16)
    theirs = run_mergekit(spec, str(tmp_path / "mergekit"))
    ours = run_ours(spec, str(tmp_path / "ours"))
    blocked = run_ours(spec, str(tmp_path / "ours_blocked"), block_bytes=4096)
    base, model = load_all(llama_bf16["base"]), load_all(llama_bf16["math"])
    assert_same_layout(ours, theirs)
    for name in theirs:
        delta = model[name].float() - base[name].float()  # exact: bf16 values subtracted in float32
        k = max(1, int(0.5 * delta.numel()))
        cut = delta.abs().flatten().sort(descending=True).values[k - 1]
        assert cut > 0, name
        away = delta.abs() != cut
        assert torch.equal(ours[name][away], theirs[name][away]), name
        assert torch.equal(ours[name], blocked[name]), name
        changed = (ours[name] != base[name].float()).flatten()
        assert int(changed.sum()) == k == int((theirs[name] != base[name].float()).sum()), name
        tied = (delta.abs() == cut).flatten().nonzero().flatten()
        quota = k - int((delta.abs() > cut).sum())
        assert changed[tied[:quota]].all() and not changed[tied[quota:]].any(), name


@pytest.mark.xfail(strict=True, reason="design difference: which of the entries tied at the magnitude cut-off "
                                       "are kept (mergekit: its argsort's order; ours: row-major order)")
def test_ties_bf16_inputs_equal_mergekit(llama_bf16, tmp_path):
    spec = bf16_ties_spec(llama_bf16)
    assert_equal_tensors(run_ours(spec, str(tmp_path / "ours")), run_mergekit(spec, str(tmp_path / "mk")), exact=True)


# ---- random methods: equal in distribution ---------------------------------------------------------------

DENSITY = {"dare_linear": 0.3, "dare_ties": 0.3, "della": 0.4, "della_linear": 0.4}
EPSILON = 0.2


def random_spec(method: str, f: dict[str, str], seed: int = 11) -> dict:
    """ONE fine-tune, weight 1, so an entry was kept exactly where the output differs from the base
    (sign election with one model keeps everything). Attention tensors have density 1: no drop."""
    params = {"weight": 1.0, "density": [{"filter": "self_attn", "value": 1.0}, {"value": DENSITY[method]}]}
    if method.startswith("della"):
        params["epsilon"] = EPSILON
    return {"merge_method": method, "base_model": f["base"], "dtype": "float32", "seed": seed,
            "models": [entry(f["math"], **params)]}


def binomial_tolerance(p: float, n: int, z: float = 5.0) -> float:
    return z * math.sqrt(p * (1 - p) / n)


def check_kept_and_rescaled(out: torch.Tensor, base: torch.Tensor, delta: torch.Tensor, density: float) -> None:
    """Kept entries are delta times sum|delta| / sum|kept delta| (mergekit's L1 rescale); the
    rest equal the base; large tensors keep about `density` of their entries."""
    kept = out != base
    factor = delta.double().abs().sum() / delta[kept].double().abs().sum()
    expected = base.double() + factor * delta.double() * kept
    # float32 rounding of base + factor * delta, and float32 sums inside the factor
    tolerance = 4 * torch.finfo(torch.float32).eps * out.double().abs() + 1e-5 * (factor * delta.double()).abs()
    assert bool(((out.double() - expected).abs() <= tolerance).all())
    if delta.numel() >= 1000:
        assert abs(float(kept.float().mean()) - density) <= binomial_tolerance(density, delta.numel())


@pytest.fixture(scope="module")
def llama_inputs(llama) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_all(llama["base"]), load_all(llama["math"])


@pytest.mark.parametrize("method", sorted(DENSITY))
def test_random_methods_match_mergekit_in_distribution(llama, llama_inputs, tmp_path, method):
    spec = random_spec(method, llama)
    ours = run_ours(spec, str(tmp_path / "ours"))
    theirs = run_mergekit(spec, str(tmp_path / "mergekit"), torch_seed=3)
    assert_same_layout(ours, theirs)
    base, model = llama_inputs
    for name in theirs:
        if "self_attn" in name:  # density 1: nothing drawn, the engines agree exactly
            assert torch.equal(ours[name], theirs[name]), name
            continue
        for out in (ours[name], theirs[name]):
            check_kept_and_rescaled(out, base[name], model[name] - base[name], DENSITY[method])


def rank_norms(delta: torch.Tensor) -> torch.Tensor:
    """Each entry's magnitude rank within its row, scaled to [0, 1], as MagPrune ranks them."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)  # (r, c)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).float()
    return (ranks / (rows.shape[1] - 1)).reshape(delta.shape)


def decile_keep_rates(kept: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor],
                      density: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per magnitude-rank decile over all tensors given: (10,) fraction kept, (10,) MagPrune's
    expected fraction (mean of density - epsilon + 2 epsilon * rank), (10,) entry count."""
    hits, expected, total = torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64), torch.zeros(10)
    for name, delta in deltas.items():
        rank = rank_norms(delta).flatten().double()
        decile = (rank * 10).long().clamp(max=9)
        total += torch.bincount(decile, minlength=10).float()
        hits += torch.bincount(decile, weights=kept[name].flatten().double(), minlength=10)
        expected += torch.bincount(decile, weights=density - EPSILON + 2 * EPSILON * rank, minlength=10)
    return hits / total, expected / total, total


def assert_della_deciles(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...]) -> None:
    """Both engines' keep rates per decile agree with each other and with MagPrune's expectation
    (binomial noise, 5 sigma), and rise from the lowest decile to the highest."""
    (ours_rates, expected, counts), theirs_rates = ours, theirs[0]
    for d in range(10):
        tol = binomial_tolerance(float(expected[d]), int(counts[d]))
        figures = (d, ours_rates.tolist(), theirs_rates.tolist())
        assert abs(float(ours_rates[d] - expected[d])) <= tol, figures
        assert abs(float(theirs_rates[d] - expected[d])) <= tol, figures
        assert abs(float(ours_rates[d] - theirs_rates[d])) <= math.sqrt(2) * tol, figures
    for rates in (ours_rates, theirs_rates):
        assert float(rates[9] - rates[0]) > EPSILON  # the expected rise over deciles 0..9 is 1.8 epsilon


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_keep_rate_rises_with_rank_like_mergekit(llama, llama_inputs, tmp_path, method):
    spec = random_spec(method, llama)
    ours = run_ours(spec, str(tmp_path / "ours"))
    theirs = run_mergekit(spec, str(tmp_path / "mergekit"), torch_seed=5)
    base, model = llama_inputs
    deltas = {n: model[n] - base[n] for n in theirs if "self_attn" not in n}
    assert_della_deciles(decile_keep_rates({n: ours[n] != base[n] for n in deltas}, deltas, DENSITY[method]),
                         decile_keep_rates({n: theirs[n] != base[n] for n in deltas}, deltas, DENSITY[method]))


def test_random_methods_are_reproducible(llama, tmp_path):
    """A fixed seed gives the same bytes, whatever the block size; another seed other masks."""
    spec = random_spec("dare_ties", llama, seed=5)
    first = run_ours(spec, str(tmp_path / "a"))
    again = run_ours(spec, str(tmp_path / "b"))
    blocked = run_ours(spec, str(tmp_path / "c"), TINY_BLOCK)
    other = run_ours(random_spec("dare_ties", llama, seed=6), str(tmp_path / "d"))
    for name in first:
        assert torch.equal(first[name], again[name]) and torch.equal(first[name], blocked[name]), name
        assert torch.equal(first[name], other[name]) == ("self_attn" in name), name


# ---- method level: our merge_tensors against mergekit's merge functions --------------------------------

def method_inputs(n: int = 3, shape: tuple[int, ...] = (64, 48), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]


def task_vector(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def ours_on_tensors(method: str, base, models, per_model: list[dict], shared: dict) -> torch.Tensor:
    m = REGISTRY[method]
    return m.merge_tensors(base if m.base == "required" else None, models,
                           [m.per_model.model_validate(p) for p in per_model], m.shared.model_validate(shared))


TASK_VECTOR_CASES = {  # id: (method, per-model parameters as lists in input order, shared parameters)
    "ties": ("ties", {"weight": [0.5, 0.7, -0.2], "density": [0.3, 0.6, 0.5]}, {}),
    "ties_unnormalized": ("ties", {"weight": [0.5, 0.7, 0.2], "density": [0.3, 0.6, 0.5]}, {"normalize": False}),
    "ties_lambda": ("ties", {"weight": [0.5, 0.7, 0.2], "density": [0.3, 0.6, 0.5]}, {"lambda": 0.7}),
    "task_arithmetic": ("task_arithmetic", {"weight": [0.5, -0.3, 0.2]}, {"normalize": True}),
    "breadcrumbs": ("breadcrumbs", {"weight": [0.5, 0.7, 0.2], "density": [0.3, 0.6, 0.9],
                                    "gamma": [0.1, 0.0, 0.05]}, {}),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"weight": [0.5, 0.7, 0.2], "density": [0.3, 0.6, 0.9],
                                              "gamma": [0.1, 0.0, 0.05]}, {}),
}


@pytest.mark.parametrize("case", sorted(TASK_VECTOR_CASES))
def test_task_vector_methods_equal_mergekit_on_tensors(case):
    method, params, shared = TASK_VECTOR_CASES[case]
    per_model = [dict(zip(params, values)) for values in zip(*params.values())]
    base, models = method_inputs()
    theirs = mk_methods.merge_tensors([base, *models], method, parameters={**params, **shared}, base_index=0)
    assert torch.equal(ours_on_tensors(method, base, models, per_model, shared), theirs)


def test_ties_count_consensus_equals_mergekit_on_tensors():
    """`consensus: count` is not a mergekit config option, but its TIES class implements it."""
    count_ties = mk_methods.GeneralizedTaskArithmeticMerge(
        consensus_method="count", sparsification_method=mk_sparsify.SparsificationMethod.magnitude,
        default_normalize=True, default_rescale=False, method_name="ties_count",
        method_pretty_name=None, method_reference_url=None)
    base, models = method_inputs()
    params = {"weight": [0.5, 0.7, 0.2], "density": [0.3, 0.6, 0.5]}
    theirs = mk_methods.merge_tensors([base, *models], count_ties, parameters=params, base_index=0)
    per_model = [{"weight": w, "density": d} for w, d in zip(params["weight"], params["density"])]
    assert torch.equal(ours_on_tensors("ties", base, models, per_model, {"consensus": "count"}), theirs)


def test_linear_slerp_model_stock_equal_mergekit_on_tensors():
    base, models = method_inputs()
    theirs = mk_methods.merge_tensors(models, "linear", parameters={"weight": [0.5, 0.3, 0.2]})
    ours = ours_on_tensors("linear", None, models, [{"weight": w} for w in (0.5, 0.3, 0.2)], {})
    assert torch.equal(ours, theirs)
    for filter_wise in (False, True):
        theirs = mk_methods.merge_tensors([base, *models], "model_stock", parameters={"filter_wise": filter_wise},
                                          base_index=0)
        ours = ours_on_tensors("model_stock", base, models, [{}] * 3, {"filter_wise": filter_wise})
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)  # cosines: float64 vs float32 sums
    theirs = mk_methods.merge_tensors([base, models[0]], "slerp", parameters={"t": 0.3}, base_index=0)
    ours = ours_on_tensors("slerp", base, models[:1], [{}], {"t": 0.3})
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)  # angle: float64 vs float32 sums


@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_magnitude_sparsification_equals_mergekit(density):
    """One task vector (zero base, weight 1, no normalization) is exactly its sparsified self:
    TIES trimming is mergekit's `magnitude`, Breadcrumbs' is `magnitude_outliers`."""
    delta = task_vector((96, 40))
    zero = torch.zeros_like(delta)
    ties = ours_on_tensors("ties", zero, [delta], [{"weight": 1.0, "density": density}], {"normalize": False})
    assert torch.equal(ties, mk_sparsify.magnitude(delta, density))
    crumbs = ours_on_tensors("breadcrumbs", zero, [delta], [{"weight": 1.0, "density": density, "gamma": 0.04}], {})
    assert torch.equal(crumbs, mk_sparsify.magnitude_outliers(delta, density, gamma=0.04))


def test_magprune_keep_rates_equal_mergekit_per_rank_decile():
    """DELLA's MagPrune on one large task vector: per-decile keep rates of ours and of mergekit's
    `della_magprune` agree within binomial noise (about 20,000 entries per decile)."""
    density = 0.4
    delta = task_vector((1024, 200))
    zero = torch.zeros_like(delta)
    per_model = [{"weight": 1.0, "density": density, "epsilon": EPSILON}]
    ours = ours_on_tensors("della_linear", zero, [delta], per_model, {})  # rescale defaults to true
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        theirs = mk_sparsify.della_magprune(delta, density, EPSILON, rescale_norm=mk_sparsify.RescaleNorm.l1)
    assert_della_deciles(decile_keep_rates({"t": ours != 0}, {"t": delta}, density),
                         decile_keep_rates({"t": theirs != 0}, {"t": delta}, density))
    for out in (ours, theirs):
        check_kept_and_rescaled(out, zero, delta, density)
