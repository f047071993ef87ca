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
    monkeypatch.setattr(fused, "_kernels", lambda: None)
    method, params, shared = CASES["ties"]
    base, models = inputs()
    out = merged(method, params, shared, base, models)
    assert not calls and out.shape == base.shape


def test_blocks_the_other_layout_and_dtypes_take_the_torch_path():
    base, one = torch.zeros(4, 6), torch.ones(4, 6)
    src = fused.sources(base, [one])
    assert fused.usable(src, [fused.Survivors()])
    assert fused.sources(base.bfloat16(), [one.bfloat16(), one.bfloat16()]) is not None
    assert fused.sources(base.bfloat16(), [one]) is not None  # the base's dtype may differ from the models'
    assert fused.sources(base, [torch.ones(6, 4).t()]) is None  # not contiguous
    assert fused.sources(base, [one.double()]) is None  # a dtype read by converting to float32 first
    assert fused.sources(base, [one, one.bfloat16()]) is None  # models of two dtypes
    assert fused.sources(base, [torch.ones(4, 5)]) is None
    assert fused.sources(None, [one]) is None
    assert not fused.usable(src, [fused.Survivors(mask=torch.ones(4, 6))])  # a float mask
    assert not fused.usable(src, [])
    assert not fused.usable(None, [fused.Survivors()])


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_whole_models_over_many_blocks_give_the_torch_bits(method, stored, request, tmp_path, calls, monkeypatch):
    """Every pass of every tensor in blocks of a few rows (TIES's tie quota filling mid-tensor, DARE's
    masks kept between reads), against the same merge on the torch path; the models stored in float32,
    or in bf16, which the kernels read as stored."""
    llama = request.getfixturevalue("llama" if stored == "float32" else "llama_bf16")
    spec = {"merge_method": method, "base_model": llama["base"], "dtype": "float32",
            "models": [{"model": llama[n], "parameters": {"weight": w, "density": d}}
                       for n, w, d in (("math", 0.6, 0.4), ("code", 0.5, 0.7))]}
    fast = run_ours(spec, str(tmp_path / "fast"), block_bytes=4096)
    assert len(calls) > len(fast)  # several blocks per tensor
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = run_ours(spec, str(tmp_path / "slow"), block_bytes=4096)
    assert_same_bits(fast, slow)


def input_folders(tmp_path) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, str]]:
    """The inputs above as model folders of one tensor "w" (base, a, b, c, same), c's NaN replaced: the
    engine refuses a NaN input."""
    from safetensors.torch import save_file

    base, models = inputs()
    models[2][3, 5] = 1.0
    folders = {}
    for name, t in zip(("base", "a", "b", "c", "same"), (base, *models)):
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
        folders[name] = str(tmp_path / name)
    return base, models, folders


def assert_same_bits(fast: dict[str, torch.Tensor], slow: dict[str, torch.Tensor]) -> None:
    """Two merges' tensors: the same names, and bit for bit the same values."""
    assert fast.keys() == slow.keys()
    for name in slow:
        assert torch.equal(bits(fast[name]), bits(slow[name])), name


def test_ties_at_the_cut_off_over_blocks_give_the_torch_bits(tmp_path, calls, monkeypatch):
    """The inputs above as one tensor of four models, merged in blocks of a few rows: the entries tied at
    a cut-off fill its quota mid-tensor, so blocks before keep them (a threshold below the cut), one ranks
    them (a mask) and blocks after drop them (a threshold at the cut)."""
    base, models, folders = input_folders(tmp_path)
    spec = {"merge_method": "ties", "base_model": folders["base"], "dtype": "float32",
            "models": [{"model": folders[n], "parameters": {"weight": w, "density": d}}
                       for n, w, d in (("a", 0.5, 0.3), ("b", 0.7, 0.5), ("c", -0.2, 0.6), ("same", 1.0, 0.5))]}
    rules = []  # input b's (threshold, whether a mask) per block
    real = fused.elect_and_agree
    monkeypatch.setattr(fused, "elect_and_agree", lambda src, live, how, *a: rules.append(
        (how[1].threshold, how[1].mask is not None)) or real(src, live, how, *a))
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


def special(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A base and a model of `dtype` whose differences hold what float32 arithmetic can tell apart: +0
    and -0 (from -0 - +0), NaN, infinities, subnormals, cancellation and rounding, over several chunks."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5000, generator=g)
    model = base + torch.randn(5000, generator=g) * torch.logspace(-40, 1, 5000)
    base[:8] = torch.tensor([0.0, -0.0, 0.0, 1.0, float("inf"), 1e-40, -3.0, 2.0])
    model[:8] = torch.tensor([-0.0, 0.0, float("nan"), float("inf"), float("inf"), 2e-40, -3.0, 2.0 + 2**-20])
    return base.to(dtype), model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deltas_from_the_stored_rows_are_the_torch_bits(dtype):
    pytest.importorskip("numba")
    base, model = special(dtype)
    got = fused.delta(fused.sources(base, [model]), 0)
    assert got.dtype == torch.float32
    assert torch.equal(bits(got), bits(model.float() - base.float()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_task_vector_is_unchanged_only_where_it_is_plus_zero_everywhere(dtype):
    pytest.importorskip("numba")
    base, model = special(dtype)
    assert fused.changed(fused.sources(base, [base.clone()]), 0)  # inf - inf is NaN, as torch's delta has it
    base[4] = 1.0
    same = fused.sources(base, [base.clone(), model])
    assert not fused.changed(same, 0) and fused.changed(same, 1)  # -0 - -0 and x - x are +0
    for entry in (-0.0, float("nan"), 1e-40):  # -0 - +0 is -0: a change
        late = torch.zeros(9000, dtype=dtype)
        late[-1] = entry  # in the last chunk
        assert fused.changed(fused.sources(torch.zeros(9000, dtype=dtype), [late]), 0)
    assert not fused.changed(fused.sources(torch.zeros(9000, dtype=dtype), [torch.zeros(9000, dtype=dtype)]), 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", ["none", "mask", "threshold", "both"])
def test_l1_sums_from_the_stored_rows_agree_with_torch(dtype, rule):
    """The compiled L1 sums equal the torch path's float64 sums up to float64 rounding."""
    from surgery.merge.methods.task_vectors import total

    pytest.importorskip("numba")
    base, model = special(dtype)
    base[2:5] = model[2:5] = 1.0  # no NaN or infinity: the sums compare as numbers
    mask = (torch.rand(5000, generator=torch.Generator().manual_seed(4)) < 0.3).view(torch.uint8)
    mask = mask if rule in ("mask", "both") else None
    threshold = 0.5 if rule in ("threshold", "both") else None
    before, after = fused.l1_sums(fused.sources(base, [model]), 0, mask, threshold)
    a = (model.float() - base.float()).abs()
    kept = a * (1 if mask is None else mask)
    kept = kept if threshold is None else torch.nn.functional.hardshrink(kept, threshold)
    assert before == pytest.approx(total(a, a.shape).item(), rel=1e-12, abs=0)
    assert after == pytest.approx(total(kept, a.shape).item(), rel=1e-12, abs=0)
    assert after < before or rule == "none"


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_bf16_inputs_are_never_copied_to_float32_whole(method, llama_bf16, tmp_path, monkeypatch):
    """With the kernels, the blocks' bf16 rows are read as stored: no block's float32 inputs are made."""
    pytest.importorskip("numba")
    from surgery.merge.methods.method import Block

    made = []
    for name in ("base", "models"):
        real = getattr(Block, name)
        monkeypatch.setattr(Block, name, property(lambda self, real=real, name=name: made.append(name)
                                                  or real.fget(self)))
    spec = {"merge_method": method, "base_model": llama_bf16["base"], "dtype": "bfloat16",
            "models": [{"model": llama_bf16[n], "parameters": {"weight": 0.5, "density": 0.5}}
                       for n in ("math", "code")]}
    out = run_ours(spec, str(tmp_path / "out"), block_bytes=4096)
    assert out and not made
    monkeypatch.setenv("SURGERY_FUSED", "0")
    run_ours(spec, str(tmp_path / "torch"), block_bytes=4096)
    assert made  # the torch path works on float32 copies


def test_blocks_are_sized_by_what_they_hold(llama_bf16, monkeypatch):
    """Where the kernels read the stored rows, a block counts bf16 inputs at 2 bytes an entry and the
    kernels' temporaries; elsewhere every input and temporary at float32's 4."""
    pytest.importorskip("numba")
    from surgery.merge.engine import Options, row_bytes
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import parse_spec

    def plan(method: str):
        spec = {"merge_method": method, "base_model": llama_bf16["base"], "dtype": "bfloat16",
                "models": [{"model": llama_bf16[n], "parameters": {"weight": 0.5, "density": 0.5}}
                           for n in ("math", "code", "chat")]}
        return plan_merge(parse_spec(spec), "spec")

    options = Options()
    dare, ties, linear = plan("dare_ties"), plan("ties"), plan("linear")
    job = next(j for j in dare.jobs if len(j.shape) == 2)
    row = job.shape[1]
    assert row_bytes(dare, job, options) == row * (4 * 2 + 4 * 2)  # four bf16 inputs; masks and the output
    assert row_bytes(ties, ties.jobs[dare.jobs.index(job)], options) == row * (4 * 2 + 4 * 2)
    assert row_bytes(linear, linear.jobs[dare.jobs.index(job)], options) == row * 4 * (3 + linear.method.work)
    assert row_bytes(dare, job, Options(device="cuda")) == row * 4 * (4 + dare.method.work)
    monkeypatch.setenv("SURGERY_FUSED", "0")
    assert row_bytes(dare, job, options) == row * 4 * (4 + dare.method.work)


def test_the_compiled_total_agrees_with_the_torch_segments(monkeypatch):
    """`task_vectors.total` compiled and in torch (float64 segment sums): the same up to float64 rounding."""
    from surgery.merge.methods.task_vectors import SEGMENT, total

    pytest.importorskip("numba")
    x = torch.rand(7, SEGMENT + 999, generator=torch.Generator().manual_seed(5)) * torch.logspace(-30, 3, 7)[:, None]
    fast = total(x, x.shape)
    assert fused.total(x) == fast.item()
    assert fused.total(x.t()) is None and fused.total(x.double()) is None  # not contiguous; not float32
    monkeypatch.setenv("SURGERY_FUSED", "0")
    slow = total(x, x.shape)
    assert fast.dtype == slow.dtype == torch.float64
    assert fast.item() == pytest.approx(slow.item(), rel=1e-13, abs=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_selection_counts_a_task_vector_read_from_the_stored_rows_as_made(dtype):
    """The counting passes over `fused.Delta` (never made whole) give the counts over the task vector made."""
    pytest.importorskip("numba")
    base, model = special(dtype)
    model[100:3000] = base[100:3000]  # zeros enough for the zero count to run
    d = model.float() - base.float()
    lazy = fused.Delta(fused.sources(base, [base, model]), 1)
    high, zeros = selection.histogram_and_zeros(lazy)
    want_high, want_zeros = selection.histogram_and_zeros(d)
    assert torch.equal(high, want_high) and int(zeros) == int(want_zeros) > 2900
    hi_bin = int(torch.nonzero(want_high[1:])[len(torch.nonzero(want_high[1:])) // 2]) + 1
    assert torch.equal(selection.low_histogram(lazy, hi_bin), selection.low_histogram(d, hi_bin))
    cut = float(d.abs()[5000 // 2])
    for quota in (0, 1, 10**6):
        assert selection.top_k_threshold(lazy, cut, quota, 0) == selection.top_k_threshold(d, cut, quota, 0)
