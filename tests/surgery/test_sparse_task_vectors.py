"""Sparse task vectors (most entries exactly 0: frozen tensors, a share of entries moved) merge to the
same bytes as before the shortcuts that make them cheap, and to mergekit's values: a cut-off among the
zeros skips the second selection pass, and an input unchanged in a block is left out of its arithmetic."""

from __future__ import annotations

import os

import pytest
import torch
from mergekit import merge_methods as mk_methods
from safetensors.torch import load_file, save_file

from surgery.merge import engine, selection
from surgery.merge.draws import Draws
from surgery.merge.methods import REGISTRY
from surgery.merge.methods import task_vectors as tv
from tests.surgery.test_mergekit_parity import run_mergekit, run_ours

SHAPE = (64, 48)


def sparse_inputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and four fine-tunes: 10%, 30% and 80% of the entries moved, and none. The base holds some
    +0 entries that the 30% fine-tune turns into -0, so some task-vector entries are -0, and some -0
    entries (where an output of base + a zero sum is -0 only if that sum is -0)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g)
    base[::7, ::5] = 0.0
    base[1::7, 2::5] = -0.0
    models = []
    for share in (0.1, 0.3, 0.8):
        moved = torch.rand(SHAPE, generator=g) < share
        models.append(torch.where(moved, base + 0.1 * torch.randn(SHAPE, generator=g), base))
    models[1][::7, ::5] = -0.0
    return base, [*models, base.clone()]


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)  # tells -0 from +0, as torch.equal does not


def ours_on_tensors(method: str, base, models, params: dict, shared: dict) -> torch.Tensor:
    m = REGISTRY[method]
    per_model = [m.per_model.model_validate(dict(zip(params, v))) for v in zip(*params.values())]
    return m.merge_tensors(base, models, per_model, m.shared.model_validate(shared))


CASES = {  # id: (method, per-model parameters in input order, shared parameters)
    "ties": ("ties", {"weight": [0.5, 0.7, -0.2, 1.0], "density": [0.3, 0.5, 0.5, 0.5]}, {}),
    "ties_lambda": ("ties", {"weight": [0.5, 0.7, 0.2, 1.0], "density": [0.05, 0.5, 0.9, 0.2]},
                    {"normalize": False, "lambda": 0.7}),
    "ties_count": ("ties", {"weight": [1.0, 1.0, 1.0, 1.0], "density": [0.5, 0.5, 0.5, 0.5]}, {"consensus": "count"}),
    "task_arithmetic": ("task_arithmetic", {"weight": [0.5, -0.3, 0.2, -1.0]}, {"normalize": True}),
    "task_arithmetic_signs": ("task_arithmetic", {"weight": [-0.5, -0.3, -0.2, 1.0]}, {}),  # -0 sums and a +0 term
    "breadcrumbs_ties": ("breadcrumbs_ties", {"weight": [0.5, 0.7, 0.2, 1.0], "density": [0.3, 0.6, 0.9, 0.5],
                                              "gamma": [0.1, 0.0, 0.05, 0.01]}, {}),
}


def mergekit_on_tensors(method: str, base, models, params: dict, shared: dict) -> torch.Tensor:
    if shared.get("consensus") == "count":
        from mergekit import sparsify as mk_sparsify
        method = mk_methods.GeneralizedTaskArithmeticMerge(
            consensus_method="count", sparsification_method=mk_sparsify.SparsificationMethod.magnitude,
            default_normalize=True, default_rescale=False, method_name="ties_count",
            method_pretty_name=None, method_reference_url=None)
        shared = {}
    return mk_methods.merge_tensors([base, *models], method, parameters={**params, **shared}, base_index=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sparse_inputs_equal_mergekit_bit_for_bit(case):
    method, params, shared = CASES[case]
    base, models = sparse_inputs()
    ours = ours_on_tensors(method, base, models, params, shared)
    assert torch.equal(bits(ours), bits(mergekit_on_tensors(method, base, models, params, shared)))


def no_shortcuts(monkeypatch) -> None:
    """The dense path: no input is ever blank, and no zero is counted (every cut-off gets its second pass)."""
    monkeypatch.setattr(tv, "_blank", lambda block, i: False)
    dense = selection.histogram_and_zeros

    def no_zeros(x):
        return dense(x)[0], torch.zeros((), dtype=torch.int64)

    monkeypatch.setattr(selection, "histogram_and_zeros", no_zeros)


@pytest.mark.parametrize("case", [*sorted(CASES), "dare_ties", "dare_linear"])
def test_shortcuts_change_no_bit(case, monkeypatch):
    """Leaving out blank inputs and skipping cut-offs among zeros gives the bits of the dense path, zero
    signs included, also where every input is unchanged (a frozen tensor) and with DARE's masks."""
    if case.startswith("dare"):
        method, params, shared = case, {"weight": [0.5, 0.7, -0.2, 1.0], "density": [0.3, 0.5, 0.5, 0.7]}, {}
    else:
        method, params, shared = CASES[case]
    base, models = sparse_inputs(1)
    frozen = [base.clone() for _ in models]
    fast = [ours_on_tensors(method, base, m, params, shared) for m in (models, frozen)]
    no_shortcuts(monkeypatch)
    dense = [ours_on_tensors(method, base, m, params, shared) for m in (models, frozen)]
    for a, b in zip(fast, dense):
        assert torch.equal(bits(a), bits(b))
    assert torch.equal(fast[1], base)  # unchanged inputs: the base (up to the sign of its zeros)


def test_a_cut_off_among_zeros_needs_no_second_pass(monkeypatch):
    """30% of the entries moved, half of them kept: the cut-off is 0, known from the first pass's count
    of zeros, so no low histogram is taken; with 80% moved it is not 0 and one is."""
    calls = []
    real = tv.low_histogram
    monkeypatch.setattr(tv, "low_histogram", lambda x, b: calls.append(b) or real(x, b))
    base, models = sparse_inputs()
    params = {"weight": [1.0], "density": [0.5]}
    ours_on_tensors("ties", base, [models[1]], params, {})
    assert calls == []
    ours_on_tensors("ties", base, [models[2]], params, {})
    assert len(calls) == 1 and calls[0] > 0


def test_unchanged_inputs_draw_no_masks(monkeypatch):
    """DARE draws a mask per entry of every input, except in blocks where the input equals the base."""
    drawn = []
    real = Draws.keep
    monkeypatch.setattr(Draws, "keep", lambda self, i, rows, d: drawn.append(i) or real(self, i, rows, d))
    base, models = sparse_inputs()
    params = {"weight": [1.0] * 4, "density": [0.5] * 4}
    ours_on_tensors("dare_ties", base, models, params, {})
    assert sorted(set(drawn)) == [0, 1, 2]  # input 3 is the base


# ---- whole models through the engine ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sparse_family(llama, tmp_path_factory) -> dict[str, str]:
    """The tiny Llama's base and fine-tunes made sparse: `s30` takes `math`'s value on 30% of the entries
    (the base's elsewhere), `frozen` keeps the base's embedding, norms and layer 0 and is `code` elsewhere."""
    root = tmp_path_factory.mktemp("sparse")
    base, math, code = (load_file(os.path.join(llama[n], "model.safetensors")) for n in ("base", "math", "code"))
    g = torch.Generator().manual_seed(3)
    s30 = {k: torch.where(torch.rand(v.shape, generator=g) < 0.3, math[k], v) for k, v in base.items()}
    still = ("embed_tokens", "norm", "layers.0.")
    frozen = {k: (v if any(s in k for s in still) else code[k]) for k, v in base.items()}
    out = {"base": llama["base"]}
    for name, tensors in (("s30", s30), ("frozen", frozen)):
        folder = root / name
        folder.mkdir()
        for f in os.listdir(llama["base"]):
            if not f.endswith(".safetensors"):
                (folder / f).write_bytes(open(os.path.join(llama["base"], f), "rb").read())
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
                  {"format": "pt"})
        out[name] = str(folder)
    return out


def spec(method: str, f: dict[str, str], **shared) -> dict:
    models = [{"model": f[n], "parameters": {"weight": w, "density": 0.5}} for n, w in (("s30", 0.6), ("frozen", 0.4))]
    return {"merge_method": method, "base_model": f["base"], "dtype": "float32", "models": models,
            **({"parameters": shared} if shared else {})}


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_sparse_models_equal_mergekit(method, sparse_family, tmp_path):
    """Whole sparse models, blocks of a few rows (every pass over many blocks) and one block per tensor."""
    s = spec(method, sparse_family)
    theirs = run_mergekit(s, str(tmp_path / "mk"))
    for label, block in (("small", 4096), ("whole", None)):
        ours = run_ours(s, str(tmp_path / label), block_bytes=block)
        assert sorted(ours) == sorted(theirs)
        for name in theirs:
            assert torch.equal(bits(ours[name]), bits(theirs[name])), (label, name)


def test_skipped_passes_read_nothing_and_change_nothing(sparse_family, tmp_path, monkeypatch):
    """A TIES merge whose cut-offs all fall among zeros skips its second pass over each tensor (the
    prefetcher drops the reads); the output's bytes are those of the merge that does every pass."""
    s = {**spec("ties", sparse_family), "models": spec("ties", sparse_family)["models"][1:]}  # frozen only
    skipped = []
    real = engine.Prefetcher.skip
    monkeypatch.setattr(engine.Prefetcher, "skip",
                        lambda self, job, span: skipped.append(job.name) or real(self, job, span))
    fast = run_ours(s, str(tmp_path / "fast"), block_bytes=4096)
    assert "model.embed_tokens.weight" in skipped
    no_shortcuts(monkeypatch)
    slow = run_ours(s, str(tmp_path / "slow"), block_bytes=4096)
    assert fast.keys() == slow.keys()
    for name in slow:
        assert torch.equal(bits(fast[name]), bits(slow[name])), name
