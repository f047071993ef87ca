"""SCE's compiled kernels (surgery/merge/fused.py: the variance, the selected task vectors' energies
and the merge, all from the stored rows) give the torch path's bits: on whole tensors with the values
that tell paths apart, over blocks where ties at the variance cut fill their quota mid-tensor, and
through the engine on float32 and bf16 models."""

from __future__ import annotations

import pytest
import torch

from surgery.merge import fused, selection
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.sce import welford_variance
from tests.surgery.test_fused import assert_same_bits, bits, input_folders, inputs
from tests.surgery.test_mergekit_parity import run_ours

pytest.importorskip("numba")


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, list[fused.Selected]]:
    """The selections the compiled energies and merge were called with."""
    seen: dict[str, list[fused.Selected]] = {"sce_energies": [], "sce_merge": []}
    for name, calls in seen.items():
        real = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda src, sel, *a, real=real, calls=calls: calls.append(sel)
                            or real(src, sel, *a))
    return seen


def sce(base: torch.Tensor, models: list[torch.Tensor], topk: float) -> torch.Tensor:
    m = REGISTRY["sce"]
    return m.merge_tensors(base, models, [m.per_model()] * len(models),
                           m.shared.model_validate({"select_topk": topk}), name="t")


def variance_cut(base: torch.Tensor, models: list[torch.Tensor], topk: float) -> torch.Tensor:
    """The k-th largest variance, k = topk of the nonzero ones (NaN ranked lowest)."""
    var = welford_variance([m - base for m in models])
    k = int(torch.count_nonzero(var) * topk)
    return var.reshape(-1).nan_to_num(-1).sort(descending=True).values[k - 1]


@pytest.mark.parametrize("topk", [1.0, 0.5, 0.3, 0.0])
@pytest.mark.parametrize("nan", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_merge_gives_the_torch_bits(topk, nan, dtype, kernel_calls, monkeypatch):
    """Every entry, some of them (0.3: the cut among tied variances: b's and c's steps of 1/8), and none,
    with -0 task-vector entries and election sums of exactly 0; with a NaN in play (its energy makes
    every weight NaN) and without."""
    base, models = inputs()
    if not nan:
        models[2][3, 5] = 1.0
    base, models = base.to(dtype), [m.to(dtype) for m in models]
    fast = sce(base, models, topk)
    assert len(kernel_calls["sce_merge"]) == 1 and len(kernel_calls["sce_energies"]) == 1
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = sce(base, models, topk)
    assert len(kernel_calls["sce_merge"]) == 1  # the torch path
    assert torch.equal(bits(fast), bits(slow))
    assert bool(fast.isnan().all()) if nan else bool(fast.isfinite().all())
    if topk == 0.0 and not nan:  # nothing selected: the base
        assert torch.equal(fast, base.float())


def test_the_cases_hold_a_cut_among_ties():
    """The variances tie where the cut of 0.3 falls, so one block ranks its ties (a mask)."""
    base, models = inputs()
    var = welford_variance([m - base for m in models])
    cut = variance_cut(base, models, 0.3)
    k = int(torch.count_nonzero(var) * 0.3)
    assert int((var == cut).sum()) > 1 and int((var > cut).sum()) < k


@pytest.mark.parametrize("threshold", [None, 0.003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_energies_agree_with_torch(threshold, dtype, monkeypatch):
    """Each model's sum of squares of its selected task vector: the same up to float64 rounding (the two
    add in different orders), by threshold, by mask, and over every entry."""
    from surgery.merge.methods.task_vectors import total

    g = torch.Generator().manual_seed(4)
    base = torch.randn(300, 70, generator=g).to(dtype)
    models = [(base.float() + torch.randn(300, 70, generator=g) * 10.0 ** (i - 3)).to(dtype) for i in range(3)]
    tvs = [m.float() - base.float() for m in models]
    var = welford_variance(tvs)
    mask = torch.rand(300, 70, generator=g) < 0.3
    for sel, weight in ((fused.Selected(), None), (fused.Selected(var, threshold or 0.0), (var > (threshold or 0.0))),
                        (fused.Selected(var, threshold or 0.0, mask), mask)):
        got = fused.sce_energies(fused.sources(base, models), sel)
        for g_i, tv in zip(got, tvs):
            masked = tv if weight is None else tv * weight.float()
            assert g_i == pytest.approx(total(masked * masked, masked.shape).item(), rel=1e-13, abs=0)
    assert fused.sce_energies(fused.sources(base, models), fused.Selected(var.t())) is None  # not contiguous


def test_ties_at_the_variance_cut_over_blocks_give_the_torch_bits(tmp_path, kernel_calls, monkeypatch):
    """One tensor of four models in blocks of 8 rows: the entries tied at the variance cut fill their quota
    mid-tensor, so blocks before select them (a threshold below the cut), one ranks them (a mask) and the
    blocks after drop them (a threshold at the cut)."""
    base, models, folders = input_folders(tmp_path)
    spec = {"merge_method": "sce", "base_model": folders["base"], "dtype": "float32",
            "parameters": {"select_topk": 0.3}, "models": [{"model": folders[n]} for n in ("a", "b", "c", "same")]}
    block = base.shape[1] * 4 * 8
    fast = run_ours(spec, str(tmp_path / "fast"), block_bytes=block)
    rules = {(s.threshold, s.mask is not None) for s in kernel_calls["sce_merge"]}
    cut = float(variance_cut(base, models, 0.3))
    assert len(rules) == 3 and (selection.below(cut), False) in rules and (cut, False) in rules
    assert len(kernel_calls["sce_energies"]) == len(kernel_calls["sce_merge"])  # a pass each, block by block
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = run_ours(spec, str(tmp_path / "slow"), block_bytes=block)
    assert torch.equal(bits(fast["w"]), bits(slow["w"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_compiled_variance_gives_the_torch_bits(n, dtype):
    """SCE's variance across the task vectors, compiled from the stored rows: the bits of
    `sce.welford_variance` (itself torch.var's), ties, -0 and wide ranges included."""
    g = torch.Generator().manual_seed(n)
    base = torch.randn(300, 70, generator=g).to(dtype)
    models = [(base.float() + torch.randn(300, 70, generator=g) * 10.0 ** (i - 2)).to(dtype) for i in range(n)]
    models[0][:10] = (base[:10].float() + torch.randint(-3, 4, (10, 70), generator=g) * 0.25).to(dtype)
    models[-1][10:12] = base[10:12]  # task vectors of +0
    got = fused.variance(fused.sources(base, models))
    want = welford_variance([m.float() - base.float() for m in models])
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_sce_through_the_engine_gives_the_torch_bits(stored, request, tmp_path, kernel_calls, monkeypatch):
    """Whole models in blocks of a few rows; with bf16 models no block's float32 inputs are made."""
    from surgery.merge.methods.method import Block

    made = []
    for name in ("base", "models"):
        real = getattr(Block, name)
        monkeypatch.setattr(Block, name, property(lambda self, real=real, name=name: made.append(name)
                                                  or real.fget(self)))
    f = request.getfixturevalue("llama" if stored == "float32" else "llama_bf16")
    spec = {"merge_method": "sce", "base_model": f["base"], "dtype": "float32", "parameters": {"select_topk": 0.4},
            "models": [{"model": f[n]} for n in ("math", "code", "chat")]}
    fast = run_ours(spec, str(tmp_path / "fast"), block_bytes=4096)
    assert len(kernel_calls["sce_merge"]) > len(fast)  # several blocks a tensor
    assert not made or stored == "float32"
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = run_ours(spec, str(tmp_path / "slow"), block_bytes=4096)
    assert made
    assert_same_bits(fast, slow)


def test_blocks_are_sized_by_the_stored_rows(llama_bf16, monkeypatch):
    """With the kernels a block counts SCE's bf16 inputs at 2 bytes an entry, plus its variance and output;
    without them every input and temporary at float32's 4."""
    from surgery.merge.engine import Options, row_bytes
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import parse_spec

    spec = {"merge_method": "sce", "base_model": llama_bf16["base"], "dtype": "bfloat16",
            "parameters": {"select_topk": 0.5}, "models": [{"model": llama_bf16[n]} for n in ("math", "code", "chat")]}
    plan = plan_merge(parse_spec(spec), "spec")
    job = next(j for j in plan.jobs if len(j.shape) == 2)
    row = job.shape[1]
    assert row_bytes(plan, job, Options()) == row * (4 * 2 + 4 * 2)
    monkeypatch.setenv("SURGERY_FUSED", "0")
    assert row_bytes(plan, job, Options()) == row * 4 * (4 + plan.method.work)
