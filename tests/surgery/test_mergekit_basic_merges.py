"""Every case of mergekit's tests/test_basic_merges.py (main branch: Llama, GPT-2 copies and stacks,
scale filters, every merge method, the LLaVA cases; the Granite cases of its Granite support) run
through `surgery merge` on our own tiny models, checked as mergekit checks its outputs (weights and
config written, no NaN, every weight of the architecture present, the case's own checks), and, for
the deterministic methods, compared with mergekit 0.1.5's tensors on the same config in float32
(mergekit's cases use bfloat16, in which mergekit computes while we compute in float32 and cast).

The models are as mergekit's: independent random tiny Llamas (hidden 32, 16 heads, 2 layers, vocab
64), a 12-layer GPT-2 (stacked to 24 layers; hidden 32 instead of 768 to stay small), LLaVAs (a CLIP
vision tower and such a Llama) and Granites.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import AutoConfig

from surgery.merge.engine import run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from tests.surgery.mergekit_checks import check_output, load_all
from tests.surgery.test_mergekit_parity import run_mergekit


def save(model, folder) -> str:
    model.save_pretrained(str(folder))
    return str(folder)


def llama_config(vocab: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_attention_heads=16,
                       num_hidden_layers=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from transformers import (
        CLIPVisionConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from surgery.demo.tiny import build_model

    root = tmp_path_factory.mktemp("basic_merges")
    out = {}
    for i, name in enumerate("abc"):
        torch.manual_seed(i)
        out[name] = save(LlamaForCausalLM(llama_config()), root / name)
        vision = CLIPVisionConfig(image_size=32, patch_size=4, num_hidden_layers=2, num_attention_heads=2,
                                  hidden_size=64, intermediate_size=128)
        config = LlavaConfig(vision_config=vision, text_config=llama_config(), image_seq_length=16)
        out[f"vlm_{name}"] = save(LlavaForConditionalGeneration(config), root / f"vlm_{name}")
        out[f"granite_{name}"] = build_model(str(root / f"granite_{name}"), "granite", seed=i)
    torch.manual_seed(3)
    gpt2 = GPT2Config(n_embd=32, n_layer=12, n_head=4, n_positions=64, vocab_size=64)
    out["gpt2"] = save(GPT2LMHeadModel(gpt2), root / "gpt2")
    return out


def two(m: dict, a: str, b: str, method: str, base: str | None = None, **params) -> dict:
    """mergekit's two_model_config: weights 0.6 and 0.4 whatever the method, bfloat16."""
    config = {"merge_method": method, "models": [{"model": m[a], "parameters": {"weight": 0.6}},
                                                 {"model": m[b], "parameters": {"weight": 0.4}}], "dtype": "bfloat16"}
    if base:
        config["base_model"] = m[base]
    return {**config, "parameters": params} if params else config


def nuslerp(m: dict, a: str, b: str, base: str | None, row_wise: bool, flatten: bool) -> dict:
    return two(m, a, b, "nuslerp", base, nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)


def family_cases(prefix: str) -> dict:
    """The cases mergekit runs on its Llama models (prefix '') and again on its LLaVAs ('vlm_')."""
    a, b, c = (prefix + x for x in "abc")
    cases = {
        "linear": lambda m: two(m, a, b, "linear"),
        "slerp": lambda m: two(m, a, b, "slerp", a, t=0.35),
        "task_arithmetic": lambda m: two(m, a, b, "task_arithmetic", c),
        "breadcrumbs": lambda m: two(m, a, b, "breadcrumbs", c),
        "ties": lambda m: two(m, a, b, "ties", c, density=0.3),
        "dare_ties": lambda m: two(m, a, b, "dare_ties", c, density=0.66),
        "model_stock": lambda m: two(m, b, c, "model_stock", a),
        "model_stock_filterwise": lambda m: two(m, b, c, "model_stock", a, filter_wise=True),
    }
    for base in (None, c):
        for row_wise in (False, True):
            for flatten in (False, True):
                name = f"nuslerp_{'base' if base else 'nobase'}" + "_rows" * row_wise + "_flat" * flatten
                cases[name] = partial(nuslerp, a=a, b=b, base=base, row_wise=row_wise, flatten=flatten)

    def zero_sum(m):  # weights summing to zero: t = 0.5
        config = two(m, a, b, "nuslerp", c, nuslerp_row_wise=False, nuslerp_flatten=False)
        config["models"][0]["parameters"]["weight"], config["models"][1]["parameters"]["weight"] = -0.5, 0.5
        return config

    cases["nuslerp_zero_sum"] = zero_sum
    return {prefix + k: v for k, v in cases.items()}


CASES = {
    "gpt2_copy": lambda m: {"merge_method": "passthrough", "models": [{"model": m["gpt2"]}], "dtype": "bfloat16"},
    "gpt2_stack": lambda m: {"merge_method": "passthrough", "dtype": "bfloat16",
                             "slices": [{"sources": [{"model": m["gpt2"], "layer_range": [0, 12]}]}] * 2},
    "passthrough_scale": lambda m: {"merge_method": "passthrough", "models": [
        {"model": m["a"], "parameters": {"scale": [{"filter": "o_proj", "value": 0}, {"value": 1}]}}]},
    **family_cases(""),
    "sce": lambda m: two(m, "a", "b", "sce", "c", select_topk=0.5),
    "multislerp": lambda m: two(m, "a", "b", "multislerp", "c"),
    "arcee_fusion": lambda m: two(m, "a", "b", "arcee_fusion", "a"),
    "nearswap": lambda m: two(m, "a", "b", "nearswap", "a", t=0.0001),
    "della": lambda m: two(m, "a", "b", "della", "c", density=0.66, epsilon=0.05, **{"lambda": 0.5}),
    "karcher": lambda m: two(m, "a", "b", "karcher", "c", max_iter=5, tol=1e-5),
    "ram": lambda m: two(m, "a", "b", "ram", "c"),
    **family_cases("vlm_"),
    "granite_copy": lambda m: {"merge_method": "passthrough", "models": [{"model": m["granite_a"]}],
                               "dtype": "bfloat16"},
    "granite_linear": lambda m: two(m, "granite_a", "granite_b", "linear"),
    "granite_slerp": lambda m: two(m, "granite_a", "granite_b", "slerp", "granite_a", t=0.35),
}
RANDOM = {"dare_ties", "vlm_dare_ties", "della"}  # masks from other random streams: see test_mergekit_parity.py
CLOSE = ("slerp", "nuslerp_base_flat", "nuslerp_nobase_flat", "nuslerp_base_rows", "nuslerp_nobase_rows",
         "multislerp", "karcher", "sce", "model_stock")  # float sums over whole tensors: a few ulps


def case_params(cases, slow=()):
    return [pytest.param(c, marks=[pytest.mark.slow] if c in slow else []) for c in cases]


def ours(config: dict, out) -> str:
    return run_merge(plan_merge(parse_spec(config), "spec.yaml"), str(out))


def check_case(case: str, folder: str) -> None:
    """mergekit's checks: its run_and_check_merge, then the case's own."""
    tensors = check_output(folder)
    if case == "gpt2_stack":
        assert AutoConfig.from_pretrained(folder).n_layer == 24
    if case == "passthrough_scale":
        scaled = [n for n in tensors if "o_proj" in n]
        assert scaled and all((tensors[n] == 0).all() for n in scaled)
        assert tensors["lm_head.weight"].count_nonzero() > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_passes_mergekit_checks(models, tmp_path, case):
    """A `weight` given to a method without one (mergekit's configs do) is ignored with a warning."""
    config = CASES[case](models)
    plan = plan_merge(parse_spec(config), "spec.yaml")
    given = any("weight" in (m.get("parameters") or {}) for m in config.get("models", []))
    if given and "weight" not in plan.method.per_model.model_fields:
        assert any(f"{plan.method.name} does not use 'weight'" in w for w in plan.warnings), plan.warnings
    check_case(case, run_merge(plan, str(tmp_path / "out")))


VLM = {c for c in CASES if c.startswith("vlm_")}


@pytest.mark.integration
@pytest.mark.parametrize("case", case_params(sorted(set(CASES) - RANDOM), slow=VLM))
def test_equals_mergekit(models, tmp_path, case):
    """float32 configs; LLaVA: mergekit 0.1.5 (with this transformers) writes its vision tower and
    projector under the in-memory names (`model.` prefixed) and drops the language model entirely
    (21 tensors; the output loads with them missing); the tensors it writes equal ours."""
    config = {**CASES[case](models), "dtype": "float32"}
    mine = load_all(ours(config, tmp_path / "ours"))
    theirs = run_mergekit(config, str(tmp_path / "mergekit"))
    if case in VLM:
        theirs = {n.removeprefix("model."): t for n, t in theirs.items()}
        assert not any(n.startswith("language_model.") for n in theirs)
        assert sum(n.startswith("language_model.") for n in mine) == 21
        mine = {n: t for n, t in mine.items() if not n.startswith("language_model.")}
    assert sorted(mine) == sorted(theirs)
    close = case.removeprefix("vlm_").removeprefix("granite_").startswith(CLOSE)
    for name, t in theirs.items():
        assert mine[name].shape == t.shape and mine[name].dtype == t.dtype, name
        if close:
            torch.testing.assert_close(mine[name], t, rtol=2e-6, atol=1e-7, msg=name)
        else:
            assert torch.equal(mine[name], t), f"{name}: max |diff| {(mine[name] - t).abs().max():.3g}"
