"""`surgery moe`: the output equals mergekit-moe 0.1.5's on the same config (its gates computed in
float32 here; it runs the base in bfloat16), identical experts give the dense model's logits, a
Qwen2-MoE's shared expert adds sigmoid(gate . x) times the dense MLP, the output is streamed into
shards and loads with AutoModelForCausalLM, and bad configs exit 2 located with nothing written."""

from __future__ import annotations

import glob
import json
import os
import re

import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner

from surgery.cli import main
from surgery.moe.build import compute_gates, plan_moe, write_moe
from surgery.moe.routing import routing_share
from surgery.moe.spec import parse_moe_spec
from tests.surgery.reference_checkpoints import digest
from tests.surgery.test_errors import leftovers
from tests.surgery.test_mergekit_parity import load_all

PROMPTS = {"math": ["the number of a time", "one two"], "code": ["write the word"], "chat": ["how are you"]}
IDS = torch.tensor([[5, 17, 40, 9, 77, 100, 3, 64], [12, 8, 8, 90, 31, 2, 55, 6]])


def moe_spec(family: dict[str, str], experts=("math", "code", "chat"), **fields) -> dict:
    spec = {"base_model": family["base"], "experts_per_token": 2,
            "experts": [{"source_model": family[e], "positive_prompts": PROMPTS[e]} for e in experts]}
    return {**spec, **fields}


def write_spec(tmp_path, spec: dict) -> str:
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def build(tmp_path, spec: dict, out: str = "moe", *flags: str) -> str:
    result = CliRunner().invoke(main, ["moe", write_spec(tmp_path, spec), str(tmp_path / out), "--quiet", *flags])
    assert result.exit_code == 0, result.output
    return str(tmp_path / out)


def logits(folder: str, ids: torch.Tensor = IDS) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


class Float32Auto:
    """mergekit-moe loads the base in bfloat16 to compute its gates; in float32 its gates are comparable."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def mergekit_moe(spec: dict, out: str, monkeypatch) -> str:
    from mergekit.moe import router
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.options import MergeOptions
    from mergekit.scripts.moe import build as mk_build

    monkeypatch.setattr(router, "AutoModelForCausalLM", Float32Auto)
    mk_build(MoEMergeConfig.model_validate(spec), out, MergeOptions(quiet=True), device="cpu")
    return out


@pytest.mark.integration
@pytest.mark.parametrize("gate_mode", ["hidden", "cheap_embed"])
def test_mixtral_equals_mergekit_moe(gate_mode, llama, tmp_path, monkeypatch):
    spec = moe_spec(llama, gate_mode=gate_mode)
    spec["experts"][1]["negative_prompts"] = ["the day"]
    ours = build(tmp_path, spec)
    theirs = mergekit_moe(spec, str(tmp_path / "mk"), monkeypatch)
    a, b = load_all(ours), load_all(theirs)
    assert sorted(a) == sorted(b)
    for name, t in b.items():
        if name.endswith("mlp.gate.weight"):  # the routers: computed by two forward passes
            torch.testing.assert_close(a[name], t, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(a[name], t), name
    ours_cfg, theirs_cfg = (json.load(open(os.path.join(f, "config.json"))) for f in (ours, theirs))
    for key in ("model_type", "architectures", "num_local_experts", "num_experts_per_tok", "intermediate_size",
                "hidden_size", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings"):
        assert ours_cfg[key] == theirs_cfg[key], key
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_qwen2_moe_with_a_shared_expert_equals_mergekit_logits(llama, tmp_path, monkeypatch):
    """mergekit writes Qwen2-MoE experts one tensor each (transformers converts them on loading); we write
    the fused tensors. Loaded, both models give the same logits. (mergekit-moe 0.1.5 opens only the base
    and the routed experts, so its shared expert must be one of those: the base here.)"""
    spec = moe_spec(llama, experts=("math", "code"), architecture="qwen",
                    shared_experts=[{"source_model": llama["base"], "positive_prompts": PROMPTS["chat"]}])
    ours = build(tmp_path, spec)
    theirs = mergekit_moe(spec, str(tmp_path / "mk"), monkeypatch)
    assert json.load(open(os.path.join(ours, "config.json")))["model_type"] == "qwen2_moe"
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-4, atol=1e-5)


def test_identical_experts_give_the_dense_logits(llama, tmp_path):
    """Mixtral normalises the top-k routing weights to sum to one: k copies of one MLP are that MLP. The
    dense model to compare with is the base (attention, norms, embeddings) with the expert's MLPs."""
    spec = moe_spec(llama, experts=("math", "code", "chat"))
    for e in spec["experts"]:
        e["source_model"] = llama["math"]
    moe = build(tmp_path, spec, "moe", "--allow-identical-experts")
    dense = transformers.AutoModelForCausalLM.from_pretrained(llama["base"], dtype=torch.float32)
    expert = transformers.AutoModelForCausalLM.from_pretrained(llama["math"], dtype=torch.float32)
    for mine, theirs in zip(dense.model.layers, expert.model.layers):
        mine.mlp.load_state_dict(theirs.mlp.state_dict())
    with torch.no_grad():
        expected = dense(IDS).logits
    torch.testing.assert_close(logits(moe), expected, rtol=1e-5, atol=1e-6)
    assert (expected - logits(llama["base"])).abs().max() > 1e-4  # 100x the tolerance: the MLPs are not the base's


def test_qwen2_moe_shared_expert_adds_its_gated_mlp(llama, tmp_path):
    """Identical routed experts and shared expert: each layer's MLP output is mlp(x) (1 + sigmoid(g . x)),
    g the shared expert's gate row; computed here on the dense model by hooking its MLPs."""
    spec = moe_spec(llama, experts=("math", "code"), architecture="qwen", gate_mode="random", seed=3,
                    shared_experts=[{"source_model": llama["base"]}])
    spec["experts"][0]["source_model"] = spec["experts"][1]["source_model"] = llama["base"]
    moe = build(tmp_path, spec, "moe", "--allow-identical-experts")
    rows = {n: t for n, t in load_all(moe).items() if n.endswith("shared_expert_gate.weight")}
    dense = transformers.AutoModelForCausalLM.from_pretrained(llama["base"], dtype=torch.float32)
    for i, layer in enumerate(dense.model.layers):
        g = rows[f"model.layers.{i}.mlp.shared_expert_gate.weight"]  # (1, H)
        layer.mlp.register_forward_hook(lambda mod, args, out, g=g: out * (1 + torch.sigmoid(args[0] @ g.T)))
    with torch.no_grad():
        expected = dense(IDS).logits
    torch.testing.assert_close(logits(moe), expected, rtol=1e-5, atol=1e-6)


def test_streamed_into_shards_with_a_card(llama, tmp_path):
    out = build(tmp_path, moe_spec(llama), "moe", "--shard-size", "40K", "--dtype", "bfloat16")
    shards = glob.glob(os.path.join(out, "*.safetensors"))
    assert len(shards) > 1 and os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    assert {t.dtype for t in load_all(out).values()} == {torch.bfloat16}
    card = open(os.path.join(out, "README.md")).read()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == [llama["base"], llama["math"], llama["code"], llama["chat"]]
    assert "merge" in front["tags"] and front["library_name"] == "transformers"
    assert "mixture of experts (Mixtral)" in card and "'write the word'" in card
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_local_experts == 3


def test_routing_share_counts_the_routers_first_choices(llama, tmp_path):
    """The share agrees with the routers' top-1 choices captured by hooks on the router modules."""
    folder = build(tmp_path, moe_spec(llama, gate_mode="random", seed=1))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    prompts = ["the number of a time", "write the word you", "how"]
    seen = []
    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(lambda mod, args, out: seen.append(out[2][:, 0]))  # top-1 indices
    share = routing_share(model, tokenizer, prompts, batch_size=8)
    real = tokenizer(prompts, return_tensors="pt", padding=True)["attention_mask"].reshape(-1).bool()
    expected = torch.stack([torch.bincount(s[real], minlength=3) for s in seen[-2:]]).float()
    torch.testing.assert_close(share, expected / real.sum())


def test_library_plan_and_write(llama, tmp_path):
    spec = parse_moe_spec(moe_spec(llama, gate_mode="uniform_random"))
    plan = plan_moe(spec, "spec")
    gates, shared = compute_gates(plan)
    assert gates.shape == (2, 3, 32) and shared is None and gates.abs().max() <= 32 ** -0.5
    out = write_moe(plan, str(tmp_path / "m"), gates, shared)
    assert not os.path.exists(os.path.join(out, "README.md"))  # a card only when given one


# ---- bad configs: exit 2, located, nothing written, inputs unchanged -------------------------------

def bad_cases(llama, qwen2) -> dict[str, tuple[dict, list[str], str]]:
    mixed = moe_spec(llama)
    mixed["experts"][1]["source_model"] = qwen2["code"]
    same = moe_spec(llama)
    for e in same["experts"]:
        e["positive_prompts"] = ["one two"]
    unprompted = moe_spec(llama)
    del unprompted["experts"][2]["positive_prompts"]
    return {
        "different architectures": (mixed, [], r"experts\.1\.source_model: '.*code' is a qwen2 model but the base "
                                               r"'.*base' is llama; every expert must have the base's architecture"),
        "too many per token": (moe_spec(llama, experts_per_token=4), [],
                               r"experts_per_token: 4 is more than the 3 expert\(s\)"),
        "identical prompts": (same, [], r"experts: every expert has the same positive and negative prompts"),
        "no prompts": (unprompted, [], r"experts\.2: gate_mode hidden computes"),
        "same model": (moe_spec(llama) | {"experts": [{"source_model": llama["math"], "positive_prompts": [p]}
                                                      for p in ("a", "b")]}, [], r"experts: every expert is"),
        "shared with mixtral": (moe_spec(llama, architecture="mixtral", shared_experts=[{"source_model": llama["chat"],
                                "positive_prompts": ["x"]}]), [], r"shared_experts: Mixtral takes no shared experts"),
        "unknown architecture": (moe_spec(llama, architecture="deepseek"), [],
                                 r"architecture: unknown output architecture 'deepseek' \(known: mixtral, qwen\)"),
        "unknown field": (moe_spec(llama, gate="hidden"), [], r"gate: unknown field 'gate'"),
        "missing model": (moe_spec(llama, base_model=str(llama["base"]) + "-gone"), [],
                          r"base_model: model folder '.*-gone' does not exist"),
        "bad gate mode": (moe_spec(llama, gate_mode="hiden"), [], r"gate_mode: Input should be"),
    }


CASES = ["different architectures", "too many per token", "identical prompts", "no prompts", "same model",
         "shared with mixtral", "unknown architecture", "unknown field", "missing model", "bad gate mode"]


@pytest.mark.parametrize("case", CASES)
def test_bad_moe_config_exit_2_located(case, llama, qwen2, tmp_path):
    spec, flags, message = bad_cases(llama, qwen2)[case]
    path = write_spec(tmp_path, spec)
    before = digest(*llama.values(), qwen2["code"], path)
    result = CliRunner().invoke(main, ["moe", path, str(tmp_path / "out"), "--quiet", *flags])
    assert result.exit_code == 2, result.output
    assert re.search(message, re.sub(r" \(line \d+\)", "", result.output)), result.output  # lines checked below
    assert result.output.startswith(f"error: {path}: ") and "Traceback" not in result.output
    if case in ("too many per token", "no prompts", "unknown field"):
        assert re.search(r": \w[\w.]* \(line \d+\): ", result.output), result.output
    assert not (tmp_path / "out").exists() and leftovers(str(tmp_path / "out")) == []
    assert digest(*llama.values(), qwen2["code"], path) == before
