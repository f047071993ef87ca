"""The compiled Gram matrices and weighted sums (surgery/merge/blend.py) give the torch path's results:
SLERP, NuSLERP, Karcher and linear merges the same bits on whole tensors and through the engine over many
blocks, from float32 and bf16 rows as stored; the float64 Gram sums the same up to float64 rounding."""

from __future__ import annotations

import pytest
import torch

from surgery.merge import blend
from surgery.merge.methods import REGISTRY
from surgery.merge.sums import dot64
from tests.surgery.test_fused import assert_same_bits, bits
from tests.surgery.test_mergekit_parity import run_ours

pytest.importorskip("numba")

CASES = {  # id: (method, shared parameters, per-model parameters, with the base)
    "slerp": ("slerp", {"t": 0.3}, [{}], True),
    "nuslerp": ("nuslerp", {}, [{"weight": 0.6}, {"weight": 0.4}], True),
    "nuslerp_models": ("nuslerp", {}, [{"weight": 0.2}, {"weight": 0.9}], False),
    "karcher": ("karcher", {}, [{}, {}, {}], False),
    "linear": ("linear", {}, [{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.4}], False),
    "linear_sum": ("linear", {"normalize": False}, [{"weight": 0.2}, {"weight": -0.5}, {"weight": 1.3}], False),
}


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name in ("gram", "blend", "weighted_sum"):
        real = getattr(blend, name)
        monkeypatch.setattr(blend, name, lambda *a, real=real, name=name: (out := real(*a)) is not None
                            and calls.append(name) or out)
    return calls


def inputs(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(96, 80, generator=g)
    models = [base + torch.randn(96, 80, generator=g) * s for s in (0.05, 0.02, 0.1)]
    models[1][::7] = base[::7]  # unchanged rows: task vectors of +0
    return base.to(dtype), [m.to(dtype) for m in models]


def merged(case: str, base: torch.Tensor, models: list[torch.Tensor]) -> torch.Tensor:
    name, shared, per_model, with_base = CASES[case]
    m = REGISTRY[name]
    return m.merge_tensors(base if with_base else None, models[:len(per_model)],
                           [m.per_model.model_validate(p) for p in per_model], m.shared.model_validate(shared))


@pytest.mark.parametrize("case", CASES)
def test_whole_tensors_give_the_torch_bits(case, kernel_calls, monkeypatch):
    base, models = inputs(0, torch.float32)
    fast = merged(case, base, models)
    assert "blend" in kernel_calls or "weighted_sum" in kernel_calls
    monkeypatch.setenv("SURGERY_FUSED", "0")
    calls = len(kernel_calls)
    slow = merged(case, base, models)
    assert len(kernel_calls) == calls  # the torch path
    assert torch.equal(bits(fast), bits(slow))


def test_colinear_task_vectors_take_the_linear_interpolation(kernel_calls, monkeypatch):
    """NuSLERP of two task vectors, one a multiple of the other: the linear branch, the same bits."""
    base, models = inputs(1, torch.float32)
    models[1] = base + 2 * (models[0] - base)
    fast = merged("nuslerp", base, models)
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = merged("nuslerp", base, models)
    assert torch.equal(bits(fast), bits(slow))
    tv = models[0] - base
    torch.testing.assert_close(fast, base + 0.6 * tv + 0.4 * 2 * tv)  # (1 - t) a + t b at t = 0.4


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gram_matrix_agrees_with_torch(dtype, with_base):
    base, models = inputs(2, dtype)
    g = blend.gram(base if with_base else None, models)
    x = [m.float() - base.float() if with_base else m.float() for m in models]
    for i in range(3):
        for j in range(3):
            want = float(dot64(x[i], x[j])) if j >= i else 0.0
            assert float(g[i, j]) == pytest.approx(want, rel=1e-13, abs=0)


def test_rows_the_kernels_cannot_read_take_the_torch_path():
    base, models = inputs(3, torch.float32)
    assert blend.gram(None, [models[0], models[1].bfloat16()]) is None  # mixed dtypes
    assert blend.gram(None, [models[0].t(), models[1].t()]) is None  # not contiguous
    assert blend.weighted_sum([m.double() for m in models], [1.0, 1.0, 1.0]) is None
    assert blend.blend(base.half(), models[0], models[1], 0.5, 0.5) is None


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["slerp", "nuslerp", "nuslerp_models", "karcher", "linear"])
def test_whole_models_over_many_blocks_give_the_torch_bits(case, stored, request, tmp_path, kernel_calls,
                                                           monkeypatch):
    f = request.getfixturevalue("llama" if stored == "float32" else "llama_bf16")
    name, shared, per_model, with_base = CASES[case]
    models = ("math", "code", "chat")[:len(per_model)]
    spec = {"merge_method": name, "dtype": "float32", "parameters": shared,
            "models": [{"model": f[n], "parameters": p} for n, p in zip(models, per_model)]}
    if with_base:
        spec["base_model"] = f["base"]
    fast = run_ours(spec, str(tmp_path / "fast"), block_bytes=4096)
    assert len(kernel_calls) > len(fast)  # several blocks a tensor
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = run_ours(spec, str(tmp_path / "slow"), block_bytes=4096)
    assert_same_bits(fast, slow)
