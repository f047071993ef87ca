"""Properties every method in the registry must have, so a new method is covered by its registry line.

On whole tensors (`Method.merge_tensors`): identical inputs give the base back, shapes are kept and the
result is float32, the same seed gives the same bytes (and another seed other bytes, for random
methods), the global random state is neither used nor changed, inputs are not modified. Through the
engine: the bytes written do not depend on the block size, equal the whole-tensor reference, and keep
the inputs' dtype.
"""

from __future__ import annotations

import math
import os
import typing

import pytest
import torch
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from surgery.errors import NumericsError
from surgery.merge.draws import CHUNK, Draws
from surgery.merge.engine import Options, run_merge
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.method import Method
from surgery.merge.methods.task_vectors import total
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec

METHODS = sorted(REGISTRY)
RANDOM = [n for n in METHODS if REGISTRY[n].random]
FAST = settings(max_examples=15, deadline=None)


# ---- parameters built from each method's typed parameter models --------------------------------

def _bounds(field) -> tuple[float | None, float | None, bool, bool]:
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if isinstance(m, (Gt, Ge)):
            lo, lo_open = (m.gt, True) if isinstance(m, Gt) else (m.ge, False)
        if isinstance(m, (Lt, Le)):
            hi, hi_open = (m.lt, True) if isinstance(m, Lt) else (m.le, False)
    return lo, hi, lo_open, hi_open


def _choices(field) -> tuple | None:
    """The allowed values of a bool or Literal field, None for a number."""
    if field.annotation is bool:
        return (False, True)
    if typing.get_origin(field.annotation) is typing.Literal:
        return typing.get_args(field.annotation)
    return None


def _skipped(method: Method, name: str, field) -> bool:
    """Optional fields without a default (passthrough's `scale`) stay unset, as in most specs."""
    return field.default is None and name not in method.required


def typical(method: Method, model: type[BaseModel], i: int = 0, flip: bool = False) -> dict:
    """Parameter values (by YAML name) inside every bound: 40% into a bounded range, 0.5 + 0.25 i for
    an unbounded weight, defaults elsewhere; `flip` turns every switch to its other setting."""
    out = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        choices = _choices(field)
        if choices is not None:
            if flip:
                out[key] = next(c for c in choices if c != field.default)
            continue
        lo, hi, _, _ = _bounds(field)
        if lo is not None and hi is not None:
            out[key] = lo + 0.4 * (hi - lo) if field.annotation is not int else lo + (hi - lo) // 2
        elif field.default is None and name in method.required:
            out[key] = 0.5 + 0.25 * i
    return out


def typical_params(method: Method, n: int, flip: bool = False):
    shared = method.shared.model_validate(typical(method, method.shared, flip=flip))
    per_model = [method.per_model.model_validate(typical(method, method.per_model, i, flip)) for i in range(n)]
    return shared, per_model


def _field_strategy(field):
    choices = _choices(field)
    if choices is not None:
        return st.sampled_from(choices)
    lo, hi, lo_open, hi_open = _bounds(field)
    if field.annotation is int:  # counts (karcher's max_iter): a few
        return st.integers(lo if lo is not None else 0, hi if hi is not None else 20)
    if lo is None and hi is None:
        return st.floats(0.1, 1.0)  # weights and scales: positive, so normalized sums stay finite
    return st.floats(lo if lo is not None else -2.0, hi if hi is not None else 2.0,
                     exclude_min=lo_open, exclude_max=hi_open)


@st.composite
def param_values(draw, method: Method, model: type[BaseModel], defaults: bool = False) -> BaseModel:
    """Any values inside the bounds; with `defaults`, only the fields without a default are drawn."""
    values = {(f.alias or name): draw(_field_strategy(f)) for name, f in model.model_fields.items()
              if not _skipped(method, name, f) and not (defaults and f.default is not None)}
    return model.model_validate(values)


@st.composite
def cases(draw, method: Method, default_switches: bool = False):
    """(shape, n models, shared, per_model, seed) for one method."""
    shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))  # 0-d and empty tensors too
    n = draw(st.integers(method.min_models, method.max_models or 3))
    shared = draw(param_values(method, method.shared, default_switches))
    per_model = [draw(param_values(method, method.per_model)) for _ in range(n)]
    return shape, n, shared, per_model, draw(st.integers(0, 2**31))


def fine_tunes(shape: tuple[int, ...], n: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and n small perturbations of it, with some entries unchanged and some tied."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = []
    for _ in range(n):
        delta = 0.1 * torch.randn(shape, generator=g)
        delta[torch.rand(shape, generator=g) < 0.2] = 0.0          # untouched entries
        delta[torch.rand(shape, generator=g) < 0.2] = 0.05         # ties in magnitude
        models.append(base + delta)
    return base, models


def run(method: Method, base, models, shared, per_model, seed=0, name="model.layers.0.mlp.up_proj.weight"):
    """The method on whole tensors, with the base where it takes one (an optional base is given)."""
    return method.merge_tensors(base if method.uses_base else None, models, per_model, shared, seed=seed, name=name)


def run_or_refuse(method: Method, base, models, shared, per_model, seed=0):
    """As `run`, but inputs a method refuses to merge (multislerp's directions that cancel, e.g. on
    0-d tensors) drop the example: properties hold for what a method merges."""
    try:
        return run(method, base, models, shared, per_model, seed)
    except NumericsError:
        assume(False)


# ---- whole-tensor properties -------------------------------------------------------------------

def test_registry_keys_are_method_names():
    """The YAML name, the module name and the registry key are one string."""
    for name, method in REGISTRY.items():
        assert method.name == name
        assert method.min_models >= 1
        assert method.max_models is None or method.max_models >= method.min_models
        assert set(method.required) <= set(method.per_model.model_fields) | set(method.shared.model_fields)


@pytest.mark.parametrize("name", METHODS)
def test_identical_inputs_give_the_base_back(name):
    """Every task vector is zero (or every input the same tensor): nothing to merge. Global switches
    keep their defaults: `linear` without `normalize` is a weighted sum, not an average."""
    method = REGISTRY[name]

    @FAST
    @given(cases(method, default_switches=True))
    def check(case):
        shape, n, shared, per_model, seed = case
        base, _ = fine_tunes(shape, 0, seed)
        out = run_or_refuse(method, base, [base.clone() for _ in range(n)], shared, per_model, seed)
        torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-6)

    check()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shape_kept_and_float32_out(name, dtype):
    method = REGISTRY[name]

    @FAST
    @given(cases(method))
    def check(case):
        shape, n, shared, per_model, seed = case
        base, models = fine_tunes(shape, n, seed)
        out = run_or_refuse(method, base.to(dtype), [m.to(dtype) for m in models], shared, per_model, seed)
        assert out.shape == base.shape
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()

    check()


@pytest.mark.parametrize("name", METHODS)
def test_inputs_not_modified(name):
    """float32 inputs reach the method without a copy, so an in-place edit would show here."""
    method = REGISTRY[name]

    @FAST
    @given(cases(method))
    def check(case):
        shape, n, shared, per_model, seed = case
        base, models = fine_tunes(shape, n, seed)
        before = [base.clone()] + [m.clone() for m in models]
        run_or_refuse(method, base, models, shared, per_model, seed)
        for x, y in zip([base] + models, before):
            assert torch.equal(x, y)

    check()


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_bytes(name):
    method = REGISTRY[name]
    n = method.max_models or 3
    base, models = fine_tunes((24, 16), n, seed=1)
    shared, per_model = typical_params(method, n)
    a = run(method, base, models, shared, per_model, seed=7)
    b = run(method, base, models, shared, per_model, seed=7)
    assert a.numpy().tobytes() == b.numpy().tobytes()


@pytest.mark.parametrize("name", METHODS)
def test_seed_matters_only_for_random_methods(name):
    """A random method draws other masks for another seed or another tensor name; the rest ignore both."""
    method = REGISTRY[name]
    n = method.max_models or 3
    base, models = fine_tunes((24, 16), n, seed=2)
    shared, per_model = typical_params(method, n)
    a = run(method, base, models, shared, per_model, seed=7)
    other_seed = run(method, base, models, shared, per_model, seed=8)
    other_name = run(method, base, models, shared, per_model, seed=7, name="model.layers.1.mlp.up_proj.weight")
    if method.random:
        assert not torch.equal(a, other_seed)
        assert not torch.equal(a, other_name)
    else:
        assert torch.equal(a, other_seed) and torch.equal(a, other_name)


@pytest.mark.parametrize("name", RANDOM)
def test_global_random_state_neither_used_nor_changed(name):
    method = REGISTRY[name]
    base, models = fine_tunes((24, 16), 2, seed=3)
    shared, per_model = typical_params(method, 2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = run(method, base, models, shared, per_model, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    b = run(method, base, models, shared, per_model, seed=7)
    assert torch.equal(a, b)


@FAST
@given(rows=st.integers(1, 300), cols=st.integers(1, 700), cuts=st.lists(st.floats(0, 1), max_size=6))
def test_draws_do_not_depend_on_the_blocking(rows, cols, cuts):
    """Row spans of any size, across the 65,536-element chunk boundaries, concatenate to the whole."""
    whole = Draws(3, "w", (rows, cols), 2).uniform(1, (0, rows))
    assert whole.shape == (rows * cols,)
    bounds = sorted({0, rows, *(int(c * rows) for c in cuts)})
    parts = [Draws(3, "w", (rows, cols), 2).uniform(1, (a, b)) for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(torch.cat(parts), whole)
    if rows * cols > CHUNK:  # chunks have their own generators: no repetition at the boundary
        assert not torch.equal(whole[:16], whole[CHUNK:CHUNK + 16])


@FAST
@given(rows=st.integers(1, 300), cols=st.integers(1, 700), cuts=st.lists(st.floats(0, 1), max_size=6),
       density=st.floats(1e-4, 1))
def test_keep_masks_do_not_depend_on_the_blocking(rows, cols, cuts, density):
    """DARE's 0/1 masks, like the uniforms: any row spans concatenate to the whole tensor's mask."""
    whole = Draws(3, "w", (rows, cols), 2).keep(1, (0, rows), density)
    assert whole.shape == (rows * cols,) and whole.dtype == torch.uint8
    assert set(whole.unique().tolist()) <= {0, 1}
    bounds = sorted({0, rows, *(int(c * rows) for c in cuts)})
    parts = [Draws(3, "w", (rows, cols), 2).keep(1, (a, b), density) for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("density", [0.5, 0.3, 0.9, 0.01, 0.002, 1e-4])
def test_keep_rate_matches_the_density(density):
    """Over 4M entries the kept share is the density within 5 sigma, sqrt(d (1 - d) / n) each; the
    threshold rounds the density to 2**-16 (2**-32 under 1/128), far inside that."""
    n = 4 * CHUNK * 16
    kept = Draws(5, "rate", (n,), 1).keep(0, (0, 1), density).mean(dtype=torch.float64).item()
    assert abs(kept - density) < 5 * math.sqrt(density * (1 - density) / n)


def test_keep_draws_differ_between_inputs_and_tensors():
    a = Draws(1, "t", (CHUNK,), 2).keep(0, (0, 1), 0.5)
    assert not torch.equal(a, Draws(1, "t", (CHUNK,), 2).keep(1, (0, 1), 0.5))
    assert not torch.equal(a, Draws(1, "u", (CHUNK,), 2).keep(0, (0, 1), 0.5))
    assert not torch.equal(a, Draws(2, "t", (CHUNK,), 2).keep(0, (0, 1), 0.5))


@FAST
@given(rows=st.integers(1, 64), cols=st.sampled_from([1, 7, 1536, 40000]), cuts=st.lists(st.floats(0, 1), max_size=4))
def test_block_sums_do_not_depend_on_the_blocking_or_threads(rows, cols, cuts):
    """The float64 totals of DARE's L1 rescale: the same bits with 1 or 2 threads (rows wider than a
    segment included), and for any row spans the same sum up to float64 rounding."""
    x = torch.rand(rows, cols, generator=torch.Generator().manual_seed(rows * cols))
    bounds = sorted({0, rows, *(int(c * rows) for c in cuts)})
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(sum((total(x[a:b], x.shape) for a, b in zip(bounds, bounds[1:])),
                               torch.zeros((), dtype=torch.float64)))
        whole = total(x, x.shape)
    finally:
        torch.set_num_threads(threads)
    assert results[0].item() == results[1].item()
    assert results[0].item() == pytest.approx(x.sum(dtype=torch.float64).item(), rel=1e-6)
    assert whole.item() == pytest.approx(results[0].item(), rel=1e-12)


# ---- through the engine --------------------------------------------------------------------------

def spec_for(name: str, family: dict[str, str], flip: bool = False, seed: int = 11) -> dict:
    """A spec merging the family's fine-tunes (as many as the method takes) with typical parameters."""
    method = REGISTRY[name]
    names = ["math", "code", "chat"][: min(method.max_models or 3, 3)]
    spec = {"merge_method": name, "seed": seed,
            "models": [{"model": family[m], "parameters": typical(method, method.per_model, i, flip)}
                       for i, m in enumerate(names)],
            "parameters": typical(method, method.shared, flip=flip)}
    if method.base != "unused":
        spec["base_model"] = family["base"]
    return spec


def merge(spec: dict, out: str, **options) -> tuple[str, object]:
    plan = plan_merge(parse_spec(spec), "spec.yaml")
    return run_merge(plan, out, Options(**options)), plan


def file_bytes(folder: str) -> dict[str, bytes]:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if f.endswith((".safetensors", ".json"))}


@pytest.mark.parametrize("flip", [False, True], ids=["defaults", "flipped"])
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.integration
def test_block_size_does_not_change_the_bytes(name, flip, llama, tmp_path):
    """One row per block (every statistic summed over many blocks) against one block per tensor."""
    spec = spec_for(name, llama, flip)
    small, _ = merge(spec, str(tmp_path / "small"), block_bytes=1)
    large, _ = merge(spec, str(tmp_path / "large"))
    a, b = file_bytes(small), file_bytes(large)
    assert "model.safetensors" in a and a.keys() == b.keys()
    for f in a:
        assert a[f] == b[f], f


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.integration
def test_engine_equals_the_whole_tensor_reference(name, llama, tmp_path):
    """Each written tensor equals `merge_tensors` on the whole input tensors with the job's parameters."""
    out, plan = merge(spec_for(name, llama), str(tmp_path / "out"), block_bytes=2048)
    written = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(written) == sorted(j.name for j in plan.jobs)
    for job in plan.jobs:
        base = plan.folders[job.base.model].read(job.base.name) if job.base else None
        models = [plan.folders[s.model].read(s.name) for s in job.models]
        ref = plan.method.merge_tensors(base, models, list(job.per_model), job.shared, seed=11, name=job.name)
        assert torch.equal(written[job.name], ref.to(job.dtype)), job.name


@pytest.mark.parametrize("name", METHODS)
def test_engine_keeps_names_shapes_and_dtypes(name, llama_bf16, tmp_path):
    """bfloat16 inputs without a dtype in the spec give bfloat16 outputs of the base's shapes."""
    out, _ = merge(spec_for(name, llama_bf16), str(tmp_path / "out"))
    written = load_file(os.path.join(out, "model.safetensors"))
    ref_model = llama_bf16["base"] if REGISTRY[name].base != "unused" else llama_bf16["math"]
    ref = load_file(os.path.join(ref_model, "model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in written.items()} == {k: (v.shape, v.dtype) for k, v in ref.items()}


@pytest.fixture(scope="module")
def odd_family(tmp_path_factory) -> dict[str, str]:
    """Folders whose tensors are empty, 0-d, 3-d, 1-d and integer (copied, not merged); no layers."""
    root = tmp_path_factory.mktemp("odd")
    g = torch.Generator().manual_seed(0)
    base = {"model.embed_tokens.weight": torch.randn(6, 4, generator=g), "extra.empty": torch.zeros(0, 3),
            "extra.scalar": torch.tensor(0.5), "extra.cube": torch.randn(3, 2, 5, generator=g),
            "extra.vector": torch.randn(7, generator=g), "extra.positions": torch.arange(5)}
    family = {}
    for i, name in enumerate(["base", "math", "code", "chat"]):
        folder = root / name
        folder.mkdir()
        tensors = {k: v if not v.is_floating_point() or i == 0 else v + 0.1 * torch.randn(v.shape, generator=g)
                   for k, v in base.items()}
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{}")
        family[name] = str(folder)
    return family


@pytest.mark.parametrize("name", METHODS)
def test_engine_handles_empty_scalar_and_3d_tensors(name, odd_family, tmp_path):
    """Every tensor is written with its shape and dtype, equal to the whole-tensor reference, and the
    integer tensor is copied from the reference model unchanged; one-row blocks change nothing."""
    spec = spec_for(name, odd_family)
    out, plan = merge(spec, str(tmp_path / "out"))
    written = load_file(os.path.join(out, "model.safetensors"))
    ref_model = odd_family["base"] if REGISTRY[name].base != "unused" else odd_family["math"]
    ref = load_file(os.path.join(ref_model, "model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in written.items()} == {k: (v.shape, v.dtype) for k, v in ref.items()}
    assert torch.equal(written["extra.positions"], torch.arange(5))
    for job in plan.jobs:
        if job.copy:
            continue
        base = plan.folders[job.base.model].read(job.base.name) if job.base else None
        models = [plan.folders[s.model].read(s.name) for s in job.models]
        expected = plan.method.merge_tensors(base, models, list(job.per_model), job.shared, seed=11, name=job.name)
        assert torch.equal(written[job.name], expected), job.name
    small, _ = merge(spec, str(tmp_path / "small"), block_bytes=1)
    assert file_bytes(small) == file_bytes(out)


def test_multislerp_zero_task_vector_with_a_tiny_eps():
    """A model equal to the base has a zero task vector, whose unit vector is 0 / eps = 0 (mergekit's
    arithmetic); a coefficient of w / eps instead overflowed float32 for eps = 3e-141 (found by the
    property above)."""
    method = REGISTRY["multislerp"]
    shared = method.shared(normalize_weights=False, eps=2.891336104219331e-141)
    per_model = [method.per_model(weight=1.0), method.per_model(weight=1.0)]
    base, tuned = torch.tensor(0.6614), torch.tensor(0.7177)
    out = run(method, base, [base.clone(), tuned], shared, per_model)
    # unit vectors (0, 1), weighted mean of norms |tuned - base|: the output is the tuned model itself
    torch.testing.assert_close(out, tuned)
