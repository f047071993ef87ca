"""Folding equals PEFT, for every adapter type and variant, on tiny Llama and GPT-2 models.

Each adapter is made by PEFT in the test with every trainable value perturbed. Two oracles:
(1) every tensor we write equals PEFT's `merge_and_unload()` within WEIGHT_ATOL (float32; the
    differences come from the order of float32 sums in B @ A and in the DoRA norms, ~1e-6);
(2) the logits of our folded model, loaded with transformers, equal the logits of PEFT's model with
    the adapter active (not merged) within LOGITS_ATOL.
The engine reads in blocks of a few rows (SMALL_BLOCKS), so row-block folding is what is checked.
A case also checks that it changed something: the base's weights must differ from the folded ones.
"""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, VeraConfig

from surgery.io.reader import ModelFolder

WEIGHT_ATOL = 1e-5
LOGITS_ATOL = 1e-4

CASES = {
    "lora": ("llama", lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    "rslora": ("llama", lambda: LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "up_proj"])),
    "rank_alpha_pattern": ("llama", lambda: LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
        rank_pattern={"layers.1.self_attn.q_proj": 2, "v_proj": 6}, alpha_pattern={"q_proj": 3, "o_proj": 20})),
    "embedding": ("llama", lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])),
    "modules_to_save": ("llama", lambda: LoraConfig(r=4, target_modules=["k_proj"], modules_to_save=["lm_head"])),
    "fan_in_fan_out_gpt2": ("gpt2", lambda: LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True,
                                                        target_modules=["c_attn", "c_proj", "c_fc"])),
    "embedding_gpt2": ("gpt2", lambda: LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True,
                                                  target_modules=["wte", "c_attn"])),
    "lora_bias_gpt2": ("gpt2", lambda: LoraConfig(r=4, fan_in_fan_out=True, lora_bias=True, target_modules=["c_attn"])),
    "dora": ("llama", lambda: LoraConfig(r=4, use_dora=True, target_modules=["q_proj", "k_proj", "down_proj"])),
    "dora_gpt2": ("gpt2", lambda: LoraConfig(r=4, use_dora=True, fan_in_fan_out=True,
                                              target_modules=["c_attn", "c_fc", "c_proj"])),
    "dora_embedding": ("llama", lambda: LoraConfig(r=4, use_dora=True, target_modules=["embed_tokens", "v_proj"])),
    "ia3": ("llama", lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                       feedforward_modules=["down_proj"])),
    "ia3_gpt2": ("gpt2", lambda: IA3Config(target_modules=["c_attn", "mlp.c_proj"],
                                           feedforward_modules=["mlp.c_proj"])),
    "vera": ("llama", lambda: VeraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"], save_projection=True)),
    "vera_regenerated": ("llama", lambda: VeraConfig(r=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                                      save_projection=False, projection_prng_key=7)),
    "vera_gpt2": ("gpt2", lambda: VeraConfig(r=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
}


def lora_config(config):
    """Random non-zero A and B from PEFT itself (B is zero by default)."""
    if isinstance(config, LoraConfig):
        config.init_lora_weights = False
    return config


def assert_equal_to_peft(ours: dict, logits: torch.Tensor, ref: dict, ref_logits: torch.Tensor, base: str) -> None:
    base_folder = ModelFolder(base)
    assert set(ours) == set(base_folder.tensors)  # same names as the base: nothing added, nothing lost
    worst = {name: (ours[name] - ref[name]).abs().max().item() for name in ours}
    assert max(worst.values()) <= WEIGHT_ATOL, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    changed = [n for n in ours if not torch.equal(ours[n], base_folder.read(n))]
    assert changed, "the adapter changed nothing: the test would prove nothing"
    assert (logits - ref_logits).abs().max().item() <= LOGITS_ATOL


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.integration
def test_fold_equals_peft(case, llama, gpt2, adapter, reference, fold):
    kind, make = CASES[case]
    base = {"llama": llama, "gpt2": gpt2}[kind]["base"]
    path = adapter(base, lora_config(make()))
    ref, ref_logits = reference(base, [path])
    ours, logits, _ = fold(base, [path])
    assert_equal_to_peft(ours, logits, ref, ref_logits, base)


def test_two_lora_adapters_with_weights(llama, adapter, reference, fold):
    """W + 0.7 * s1 * B1 A1 - 0.4 * s2 * B2 A2, adapters overlapping on q_proj; PEFT scales `scaling`."""
    base = llama["base"]
    first = adapter(base, lora_config(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])), "one", 1)
    second = adapter(base, lora_config(LoraConfig(r=2, lora_alpha=4, use_rslora=True,
                                                  target_modules=["q_proj", "o_proj"])), "two", 2)
    ref, ref_logits = reference(base, [first, second], [0.7, -0.4])
    ours, logits, _ = fold(base, [first, second], [0.7, -0.4])
    assert_equal_to_peft(ours, logits, ref, ref_logits, base)
    plain, _ = reference(base, [first, second])
    assert (plain["model.layers.0.self_attn.q_proj.weight"]
            - ours["model.layers.0.self_attn.q_proj.weight"]).abs().max() > 1e-3


def test_lora_then_ia3_fold_in_order(llama, adapter, fold, tmp_path):
    """Two adapters of different types equal folding the first, saving, then folding the second onto it."""
    base = llama["base"]
    first = adapter(base, lora_config(LoraConfig(r=4, target_modules=["k_proj", "down_proj"])), "lora")
    second = adapter(base, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]), "ia3")
    both, _, _ = fold(base, [first, second], name="both")
    _, _, step = fold(base, [first], name="step")
    chained, _, _ = fold(step, [second], name="chained")
    assert max((both[n] - chained[n]).abs().max().item() for n in both) <= WEIGHT_ATOL


@pytest.mark.parametrize("case", ["dora_gpt2", "dora_embedding"])
def test_dora_column_norms_summed_over_blocks(case, llama, gpt2, adapter, reference, fold, monkeypatch):
    """A DoRA weight stored (in, out) needs whole-column norms: with a tiny norm block they are summed
    over many blocks of rows, and the result is still PEFT's."""
    import surgery.adapters.kinds.dora

    monkeypatch.setattr(surgery.adapters.kinds.dora, "NORM_BLOCK", 512)  # 4 rows of a 32-wide float32 weight
    kind, make = CASES[case]
    base = {"llama": llama, "gpt2": gpt2}[kind]["base"]
    path = adapter(base, lora_config(make()))
    ref, ref_logits = reference(base, [path])
    ours, logits, _ = fold(base, [path])
    assert_equal_to_peft(ours, logits, ref, ref_logits, base)
