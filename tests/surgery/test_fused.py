"""The compiled combine of the TIES family (surgery/merge/fused.py) gives the torch path's bits: on
whole tensors with the values that tell paths apart (+0 and -0, NaN, ties of the election, entries at
a cut-off), over many blocks through the engine, and over spans taken by several threads."""

from __future__ import annotations

import pytest
import torch

from surgery.merge import fused, selection
from surgery.merge.methods import REGISTRY
from tests.surgery.test_mergekit_parity import run_ours

SHAPE = (96, 80)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)  # tells -0 from +0, and one NaN from another


def inputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and three fine-tunes: one changes a third of the entries, one moves every entry by a
    multiple of 1/8 (so task vectors tie and cancel exactly: election sums of +0), one holds a NaN and
    a few -0 task-vector entries; and an unchanged one."""
    g = torch.Generator().manual_seed(seed)
    base = torch.round(torch.randn(SHAPE, generator=g) * 256) / 256  # so that base + k / 8 is exact
    base[::9, ::4] = 0.0
    a = torch.where(torch.rand(SHAPE, generator=g) < 0.33, base + 0.1 * torch.randn(SHAPE, generator=g), base)
    b = base + torch.randint(-2, 3, SHAPE, generator=g) / 8
    c = base - (b - base)  # cancels b exactly where a did not move
    c[3, 5] = float("nan")
    c[::9, ::4] = -0.0  # a task vector of -0 on the base's +0 entries
    return base, [a, b, c, base.clone()]


CASES = {  # id: (method, per-model parameters, shared parameters)
    "ties": ("ties", {"weight": [0.5, 0.7, -0.2, 1.0], "density": [0.3, 0.5, 0.5, 0.5]}, {}),
    "ties_lambda": ("ties", {"weight": [0.5, 0.7, 0.2, 1.0], "density": [0.05, 0.5, 0.9, 1.0]},
                    {"normalize": False, "lambda": 0.7}),
    "ties_count": ("ties", {"weight": [1.0, 1.0, 1.0, 1.0], "density": [0.5, 0.5, 0.5, 0.5]}, {"consensus": "count"}),
    "dare_ties": ("dare_ties", {"weight": [0.5, 0.3, 0.2, 0.4], "density": [0.5, 0.3, 0.9, 0.5]}, {}),
    "dare_ties_plain": ("dare_ties", {"weight": [1.0, 1.0, 1.0, 1.0], "density": [0.5, 0.5, 0.5, 0.5]},
                        {"rescale": False, "normalize": True, "lambda": 1.3}),
    "della": ("della", {"weight": [0.5, 0.3, 0.2, 0.4], "density": [0.5, 0.4, 0.7, 0.5], "epsilon": [0.1] * 4}, {}),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"weight": [0.5, 0.7, 0.2, 1.0], "density": [0.3, 0.6, 0.9, 0.5],
                                              "gamma": [0.1, 0.0, 0.05, 0.01]}, {}),
}


def merged(method: str, params: dict, shared: dict, base, models) -> torch.Tensor:
    m = REGISTRY[method]
    per_model = [m.per_model.model_validate(dict(zip(params, v))) for v in zip(*params.values())]
    return m.merge_tensors(base, models, per_model, m.shared.model_validate(shared), seed=7, name="t")


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """How many blocks the compiled combine merged."""
    count: list[int] = []
    real = fused.elect_and_agree
    monkeypatch.setattr(fused, "elect_and_agree", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


@pytest.mark.parametrize("case", CASES)
def test_the_compiled_combine_gives_the_torch_bits(case, calls, monkeypatch):
    method, params, shared = CASES[case]
    base, models = inputs()
    fast = merged(method, params, shared, base, models)
    assert len(calls) == 1
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = merged(method, params, shared, base, models)
    assert len(calls) == 1  # the torch path
    assert torch.equal(bits(fast), bits(slow))
    assert fast[3, 5].isnan() or params["density"][2] < 1  # the NaN is in play where c's entry survives


def test_every_value_that_tells_paths_apart_is_in_the_inputs():
    """The inputs hold what the cases must meet: -0 task-vector entries, election sums of exactly 0,
    a NaN, and entries tied at a magnitude cut-off."""
    base, (a, b, c, _) = inputs()
    dc = c - base
    assert bool(((dc == 0) & dc.signbit()).any())
    assert bool((((b - base) + dc) == 0).any())
    assert bool(dc.isnan().any())
    assert (b - base).abs().unique().tolist() == [0, 0.125, 0.25]  # a cut-off falls among ties


@pytest.mark.parametrize("threads", [1, 3])
def test_spans_over_threads_give_the_same_bits(threads, calls, monkeypatch):
    method, params, shared = CASES["dare_ties"]
    base, models = inputs(1)
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = merged(method, params, shared, base, models)
    monkeypatch.delenv("SURGERY_FUSED")
    monkeypatch.setattr(fused, "MIN_SPAN", 1000)
    spans = []
    real = fused._spans
    monkeypatch.setattr(fused, "_spans", lambda n, t: spans.append(real(n, t)) or spans[-1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = merged(method, params, shared, base, models)
    finally:
        torch.set_num_threads(before)
    assert len(spans[0]) == threads and spans[0][-1][1] == base.numel()
    assert torch.equal(bits(fast), bits(slow))


def test_without_numba_the_torch_path_merges(calls, monkeypatch):
    monkeypatch.setattr(fused, "_kernel", lambda: None)
    method, params, shared = CASES["ties"]
    base, models = inputs()
    out = merged(method, params, shared, base, models)
    assert not calls and out.shape == base.shape


def test_blocks_the_other_layout_and_other_devices_take_the_torch_path():
    base = torch.zeros(4, 6)
    s = fused.Survivors(torch.ones(4, 6))
    assert fused.usable(base, [s])
    assert not fused.usable(base, [fused.Survivors(torch.ones(6, 4).t())])  # not contiguous
    assert not fused.usable(base, [fused.Survivors(torch.ones(4, 6, dtype=torch.float64))])
    assert not fused.usable(base, [fused.Survivors(torch.ones(4, 6), mask=torch.ones(4, 6))])  # a float mask
    assert not fused.usable(base, [])


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_whole_models_over_many_blocks_give_the_torch_bits(method, llama, tmp_path, calls, monkeypatch):
    """Every pass of every tensor in blocks of a few rows (TIES's tie quota filling mid-tensor, DARE's
    masks kept between reads), against the same merge on the torch path."""
    spec = {"merge_method": method, "base_model": llama["base"], "dtype": "float32",
            "models": [{"model": llama[n], "parameters": {"weight": w, "density": d}}
                       for n, w, d in (("math", 0.6, 0.4), ("code", 0.5, 0.7))]}
    fast = run_ours(spec, str(tmp_path / "fast"), block_bytes=4096)
    assert len(calls) > len(fast)  # several blocks per tensor
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = run_ours(spec, str(tmp_path / "slow"), block_bytes=4096)
    assert fast.keys() == slow.keys()
    for name in slow:
        assert torch.equal(bits(fast[name]), bits(slow[name])), name


def test_ties_at_the_cut_off_over_blocks_give_the_torch_bits(tmp_path, calls, monkeypatch):
    """The inputs above as one tensor of four models, merged in blocks of a few rows: the entries tied at
    a cut-off fill its quota mid-tensor, so blocks before keep them (a threshold below the cut), one ranks
    them (a mask) and blocks after drop them (a threshold at the cut)."""
    from safetensors.torch import save_file

    base, models = inputs()
    models[2][3, 5] = 1.0  # the engine refuses a NaN input
    folders = {}
    for name, t in zip(("base", "a", "b", "c", "same"), (base, *models)):
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
        folders[name] = str(tmp_path / name)
    spec = {"merge_method": "ties", "base_model": folders["base"], "dtype": "float32",
            "models": [{"model": folders[n], "parameters": {"weight": w, "density": d}}
                       for n, w, d in (("a", 0.5, 0.3), ("b", 0.7, 0.5), ("c", -0.2, 0.6), ("same", 1.0, 0.5))]}
    rules = []  # input b's (threshold, whether a mask) per block
    real = fused.elect_and_agree
    monkeypatch.setattr(fused, "elect_and_agree", lambda base, how, *a: rules.append(
        (how[1].threshold, how[1].mask is not None)) or real(base, how, *a))
    fast = run_ours(spec, str(tmp_path / "fast"), block_bytes=SHAPE[1] * 4 * 8)  # 8 rows a block
    assert set(rules) == {(selection.below(0.125), False), (None, True), (0.125, False)}
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = run_ours(spec, str(tmp_path / "slow"), block_bytes=SHAPE[1] * 4 * 8)
    assert torch.equal(bits(fast["w"]), bits(slow["w"]))


def test_the_cases_cross_the_kernels_chunks():
    """The cases above test chunk edges: a tensor spans several chunks and ends inside one."""
    fused_kernel = pytest.importorskip("surgery.merge.fused_kernel")
    n = SHAPE[0] * SHAPE[1]
    assert n > 2 * fused_kernel.CHUNK and n % fused_kernel.CHUNK
