"""The parameter-efficient methods on tiny models, each with a few plain optimizer steps on one fixed
batch: the loss falls, exactly the method's parameters change (every one of them, and no base weight
or buffer), methods that start from the base give the base's logits before training, and the saved
adapter, loaded back (PEFT's `PeftModel.from_pretrained`, or our bottleneck loader), gives the
trained model's logits."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from surgery.errors import InputError, SpecError
from tests.trainers.conftest import spec_dict
from trainers.methods import REGISTRY, bottleneck, lora, lora_plus, prompt, qlora
from trainers.objectives.sft import token_loss
from trainers.spec import parse_run

# method -> (config, what every trainable parameter's name contains, learning rate)
CASES = {
    "lora": ({"r": 4}, ".lora_", 1e-2),
    "dora": ({"r": 4}, ".lora_", 1e-2),
    "lora_plus": ({"r": 4, "ratio": 4}, ".lora_", 5e-3),
    "vera": ({"r": 16}, ".vera_lambda_", 5e-2),
    "ia3": ({}, ".ia3_l.", 0.2),
    "prefix": ({"num_virtual_tokens": 4, "projection_hidden": 16}, "prompt_encoder.", 5e-2),
    "p_tuning_v2": ({"num_virtual_tokens": 4}, "prompt_encoder.", 0.2),
    "prompt": ({"num_virtual_tokens": 4}, "prompt_encoder.", 5e-2),
    "bottleneck": ({"size": 8}, ".bottleneck.", 5e-2),
}
STARTS_AS_BASE = {"lora", "dora", "lora_plus", "vera", "ia3", "bottleneck"}  # zero B, unit vectors, zero up
STEPS = 15


@pytest.fixture(scope="session")
def lively(build, tmp_path_factory) -> str:
    """A tiny Llama whose weights are drawn 5x wider than the default (std 0.1, not 0.02): the default's
    output is so close to uniform that methods which only rescale or prepend (IA3, prompts) barely
    move it in a few steps."""
    return build(str(tmp_path_factory.mktemp("peft") / "base"), "llama", initializer_range=0.1)


def fixed_batch(vocab: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (4, 12), generator=g)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def logits(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def optimizer(model, module, config, lr: float) -> torch.optim.Optimizer:
    if getattr(module, "param_groups", None) is not None:  # a TrainingMethod, or a method module
        return torch.optim.AdamW(module.param_groups(model, config, lr), lr=lr)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def train(model, module, config, lr: float, steps: int = STEPS) -> list[float]:
    """Plain steps: forward, next-token loss, backward, AdamW step; the losses seen."""
    batch, opt, losses = fixed_batch(), optimizer(model, module, config, lr), []
    model.train()
    for _ in range(steps):
        loss, _ = token_loss(logits(model, batch), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def load_saved(name: str, base: str, folder: str):
    from peft import PeftModel

    if name == "bottleneck":
        return bottleneck.load(base, folder)
    if name == "prompt":
        return prompt.load(base, folder)
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder).eval()


def check_method(name: str, base: str, folder: str, settings: dict | None = None,
                 marker: str | None = None) -> torch.nn.Module:
    """The whole proof for one method; `settings` and `marker` replace those of CASES."""
    default_settings, default_marker, lr = CASES[name]
    module, marker = REGISTRY[name], marker or default_marker
    config = module.config(**(default_settings if settings is None else settings))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    batch = fixed_batch()
    with torch.no_grad():
        base_logits = logits(model, batch)
    model = module.attach(model, config)
    names = trainable(model)
    assert names and all(marker in n for n in names), sorted(names)[:4]
    if name in STARTS_AS_BASE:
        with torch.no_grad():
            torch.testing.assert_close(logits(model, batch), base_logits, rtol=0, atol=1e-6)
    before = snapshot(model)
    losses = train(model, module, config, lr)
    assert losses[-1] < losses[0] - 0.2, losses
    after = snapshot(model)
    assert {k for k in before if not torch.equal(before[k], after[k])} == names  # these, all of these, only these

    module.save(model, folder, config)
    loaded = load_saved(name, base, folder)
    with torch.no_grad():
        trained_logits, loaded_logits = logits(model, batch), logits(loaded, batch)
    torch.testing.assert_close(loaded_logits, trained_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(loaded_logits, base_logits, atol=1e-3)  # the adapter did load, not the bare base
    return model


@pytest.mark.parametrize("name", [n for n in CASES if n != "bottleneck"])
def test_peft_method_trains_saves_and_loads(name, lively, tmp_path):
    check_method(name, lively, str(tmp_path))
    with open(tmp_path / "adapter_config.json") as f:
        assert json.load(f)["peft_type"] == {
            "lora_plus": "LORA", "dora": "LORA", "p_tuning_v2": "PREFIX_TUNING", "prefix": "PREFIX_TUNING",
            "prompt": "PROMPT_TUNING"}.get(name, name.upper())
    assert os.path.isfile(tmp_path / "adapter_model.safetensors")


@pytest.mark.parametrize("name", ["lora", "dora", "lora_plus", "vera", "ia3"])
def test_trained_adapter_folds_into_its_base(name, lively, tmp_path):
    """What training writes is what the merge engine takes: `surgery fold` of the saved adapter gives
    a plain model with the trained model's logits."""
    model = check_method(name, lively, str(tmp_path / "adapter"))
    assert_folds_to(model, lively, str(tmp_path / "adapter"), str(tmp_path / "folded"))


def assert_folds_to(model, base: str, adapter: str, out: str) -> None:
    from surgery.adapters.fold_plan import plan_fold
    from surgery.merge.engine import run_merge

    folded = run_merge(plan_fold(base, [adapter]), out)
    batch = fixed_batch()
    with torch.no_grad():
        expected = logits(model, batch)
        got = logits(AutoModelForCausalLM.from_pretrained(folded, dtype=torch.float32).eval(), batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_bottleneck_trains_saves_and_loads(lively, tmp_path):
    model = check_method("bottleneck", lively, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [bottleneck.CONFIG_FILE, bottleneck.WEIGHTS_FILE]
    # 2 layers x (after attention, after feed-forward) x (down, up) x (weight, bias)
    assert len(trainable(model)) == 16
    assert "model.layers.1.mlp.bottleneck.up.weight" in trainable(model)


def test_bottleneck_where_and_gpt2(build, tmp_path):
    """Only the chosen sublayers get adapters; GPT-2's `attn` returns a tuple, its `mlp` a tensor."""
    base = build(str(tmp_path / "gpt2"), "gpt2", initializer_range=0.1)
    model = check_method("bottleneck", base, str(tmp_path / "ff"), {"size": 4, "where": ["feed_forward"]},
                         ".mlp.bottleneck.")
    assert len(trainable(model)) == 8  # 2 blocks x (down, up) x (weight, bias), none in attention
    model = check_method("bottleneck", base, str(tmp_path / "both"), {"size": 4})
    assert len(trainable(model)) == 16


def test_bottleneck_load_refuses_another_base(base, build, tmp_path):
    model = bottleneck.attach(AutoModelForCausalLM.from_pretrained(base), bottleneck.Config(size=4))
    bottleneck.save(model, str(tmp_path), bottleneck.Config(size=4))
    wider = build(str(tmp_path / "wider"), "llama", hidden_size=64)
    with pytest.raises(InputError, match="do not fit the base"):
        bottleneck.load(wider, str(tmp_path))
    with pytest.raises(InputError, match="not a bottleneck adapter folder"):
        bottleneck.load(base, base)


def test_lora_on_gpt2_sets_fan_in_fan_out(build, tmp_path):
    """GPT-2's Conv1D weights are (in, out): PEFT must transpose the update, and the saved config says so."""
    base = build(str(tmp_path / "gpt2"), "gpt2", initializer_range=0.1)
    model = check_method("lora", base, str(tmp_path / "adapter"))
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        saved = json.load(f)
    assert saved["fan_in_fan_out"] is True
    assert {n.split(".")[-4] for n in trainable(model)} == {"c_attn", "c_proj", "c_fc"}
    assert_folds_to(model, base, str(tmp_path / "adapter"), str(tmp_path / "folded"))


def test_lora_defaults_cover_every_linear_layer_of_llama(base):
    model = lora.attach(AutoModelForCausalLM.from_pretrained(base), lora.Config())
    adapted = {n.split(".")[-4] for n in trainable(model)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_plus_gives_b_the_ratio(base):
    config = lora_plus.Config(r=4, ratio=16)
    model = lora_plus.attach(AutoModelForCausalLM.from_pretrained(base), config)
    groups = lora_plus.param_groups(model, config, lr=1e-4)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1.6e-3)]
    assert all(".lora_A." in by_id[id(p)] for p in groups[0]["params"])
    assert all(".lora_B." in by_id[id(p)] for p in groups[1]["params"])
    assert {by_id[id(p)] for g in groups for p in g["params"]} == trainable(model)


@pytest.mark.parametrize("name", ["lora", "bottleneck"])
def test_attaching_twice_is_refused(name, base):
    module = REGISTRY[name]
    model = module.attach(AutoModelForCausalLM.from_pretrained(base), module.config())
    with pytest.raises(InputError, match="already carr"):
        module.attach(model, module.config())


def test_unknown_target_modules_name_the_real_ones(base):
    with pytest.raises(SpecError, match=r"method.target_modules: none of \{'wq'\}.*q_proj"):
        lora.attach(AutoModelForCausalLM.from_pretrained(base), lora.Config(target_modules=["wq"]))


@pytest.mark.parametrize("method, field, match", [
    ({"name": "lora", "r": 0}, "method.r", "greater than or equal to 1"),
    ({"name": "lora", "rank": 8}, "method.rank", "unknown field 'rank' of method 'lora'"),
    ({"name": "lora_plus", "ratio": 0.5}, "method.ratio", "greater than or equal to 1"),
    ({"name": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}, "method",
     "not in target_modules"),
    ({"name": "bottleneck", "where": []}, "method.where", "at least 1 item"),
    ({"name": "bottleneck", "non_linearity": "softmax"}, "method.non_linearity", "relu"),
    ({"name": "prompt", "num_virtual_tokens": 0}, "method.num_virtual_tokens", "greater than or equal to 1"),
])
def test_bad_method_fields_are_located(method, field, match):
    with pytest.raises(SpecError, match=match) as e:
        parse_run(spec_dict(method=method), "run.yaml")
    assert e.value.field.startswith(field)


def test_p_tuning_v2_and_prefix_differ_in_reparameterisation(base):
    """Both put trained keys and values at every layer; prefix trains them through an MLP by default."""
    from trainers.methods import p_tuning_v2, prefix

    direct = p_tuning_v2.attach(AutoModelForCausalLM.from_pretrained(base), p_tuning_v2.Config(num_virtual_tokens=4))
    mlp = prefix.attach(AutoModelForCausalLM.from_pretrained(base), prefix.Config(num_virtual_tokens=4))
    layers, kv_width = 2, 2 * 8  # 2 layers; 2 KV heads of 32 / 4 = 8 dims (grouped-query attention)
    assert ([tuple(p.shape) for p in direct.parameters() if p.requires_grad]
            == [(4, layers * 2 * kv_width)])  # keys and values
    assert len([p for p in mlp.parameters() if p.requires_grad]) == 5  # embedding + two linear layers


# --- QLoRA ---------------------------------------------------------------------------------------

def bitsandbytes_or_skip():
    try:
        import bitsandbytes  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # not installed, or its native library fails to load
        pytest.skip(f"bitsandbytes cannot be imported here ({e}); install surgery[qlora] to run the QLoRA tests")


def test_qlora_trains_after_an_eval_pass(lively, tmp_path):
    """An eval forward under no_grad first (where bitsandbytes would repack the 4-bit weights on
    avx512_bf16 CPUs and training would silently stop), then training: the LoRA weights change."""
    bitsandbytes_or_skip()
    import bitsandbytes as bnb
    from peft import PeftModel

    config = qlora.Config(r=4)
    model = qlora.load_model(lively, config, torch.float32)
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 14 and not any(m.support_avx512bf16_for_cpu for m in quantised)
    assert quantised[0].weight.quant_type == "nf4" and quantised[0].weight.quant_state.nested  # double quantisation
    batch = fixed_batch()
    model.eval()
    with torch.no_grad():
        base_logits = logits(model, batch)
    torch.manual_seed(0)
    model = qlora.attach(model, config)
    names = trainable(model)
    assert names and all(".lora_" in n for n in names)
    before = snapshot(model)
    losses = train(model, qlora, config, lr=1e-2)
    assert losses[-1] < losses[0] - 0.2, losses
    after = snapshot(model)
    assert {k for k in before if not torch.equal(before[k], after[k])} == names

    qlora.save(model, str(tmp_path), config)
    loaded = PeftModel.from_pretrained(qlora.load_model(lively, config, torch.float32), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, batch), logits(model, batch), rtol=0, atol=1e-5)
        assert not torch.allclose(logits(loaded, batch), base_logits, atol=1e-3)


def test_qlora_without_bitsandbytes_says_how_to_install(base, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(SpecError, match=r"method.name: .*bitsandbytes.*pip install surgery\[qlora\]"):
        qlora.load_model(base, qlora.Config(), torch.float32)


def test_qlora_refuses_a_full_precision_model(base):
    bitsandbytes_or_skip()
    with pytest.raises(InputError, match="no 4-bit layer.*qlora.load_model"):
        qlora.attach(AutoModelForCausalLM.from_pretrained(base), qlora.Config())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_on_cuda(lively, tmp_path):
    """The CUDA path: 4-bit base on the GPU, bfloat16 compute, float32 adapters."""
    bitsandbytes_or_skip()
    from peft import PeftModel

    config = qlora.Config(r=4)
    model = qlora.load_model(lively, config, torch.bfloat16)
    assert next(model.parameters()).device.type == "cuda"
    batch = {k: v.cuda() for k, v in fixed_batch().items()}
    model.eval()
    with torch.no_grad():
        logits(model, batch)
    torch.manual_seed(0)
    model = qlora.attach(model, config)
    names = trainable(model)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in names)
    before = snapshot(model)
    opt, losses = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2), []
    model.train()
    for _ in range(STEPS):
        loss, _ = token_loss(logits(model, batch), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.2, losses
    after = snapshot(model)
    assert {k for k in before if not torch.equal(before[k], after[k])} == names
    model.eval()
    qlora.save(model, str(tmp_path), config)
    loaded = PeftModel.from_pretrained(qlora.load_model(lively, config, torch.bfloat16), str(tmp_path)).eval()
    with torch.no_grad():
        # training keeps norms and head in float32 (prepare_model_for_kbit_training); the reloaded model
        # runs them in bfloat16, so the logits agree to bfloat16 precision, not bit for bit
        torch.testing.assert_close(logits(loaded, batch).float(), logits(model, batch).float(), rtol=2e-2, atol=5e-2)
