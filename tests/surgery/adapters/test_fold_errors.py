"""Bad adapters are refused before anything is written: a typed error (exit 2 from the CLI, one line,
no traceback) naming the adapter file, the module and the tensor, and nothing at OUT (no partial
folder either); the inputs are left as they were."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from click.testing import CliRunner
from peft import IA3Config, LoraConfig

from surgery.cli import main
from tests.surgery.reference_checkpoints import digest

Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
WEIGHTS = "adapter_model.safetensors"


def refused(base: str, adapter: str, tmp_path, *flags: str, extra: tuple[str, ...] = ()) -> str:
    """Run `surgery fold`, expect exit 2, nothing written, inputs unchanged; return the message."""
    out = tmp_path / "out"
    before = digest(base), digest(adapter)
    result = CliRunner().invoke(main, ["fold", base, adapter, *extra, str(out), "--quiet", *flags])
    assert result.exit_code == 2, result.output
    assert not out.exists() and not glob.glob(str(tmp_path / ".out.*"))
    assert (digest(base), digest(adapter)) == before
    assert "Traceback" not in result.output
    return result.output


def with_tensor(name: str, value):
    def edit(tensors: dict) -> dict:
        tensors = dict(tensors)
        tensors[name] = value(tensors[name]) if callable(value) else value
        return tensors
    return edit


def test_unknown_peft_type(llama, edited, tmp_path):
    adapter = edited(config=lambda c: {**c, "peft_type": "LOHA"})
    message = refused(llama["base"], adapter, tmp_path)
    assert "adapter_config.json" in message and "'LOHA'" in message and "LORA, IA3, VERA" in message


@pytest.mark.parametrize("kind", ["PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"])
def test_virtual_token_adapters(llama, edited, tmp_path, kind):
    message = refused(llama["base"], edited(config=lambda c: {"peft_type": kind, "num_virtual_tokens": 8}), tmp_path)
    assert kind in message and "cannot be folded into weights: it adds virtual tokens, not weight deltas" in message


def test_target_module_missing_in_base(gpt2, llama_lora, tmp_path):
    message = refused(gpt2["base"], llama_lora, tmp_path)
    assert WEIGHTS in message and "model.layers.0.self_attn" in message and "has no tensor" in message


def test_shape_off(llama, edited, tmp_path):
    adapter = edited(tensors=with_tensor(Q_B, torch.randn(40, 4)))
    message = refused(llama["base"], adapter, tmp_path)
    assert WEIGHTS in message and "model.layers.0.self_attn.q_proj" in message and "[32, 32]" in message


def test_rank_mismatch_between_a_and_b(llama, edited, tmp_path):
    adapter = edited(tensors=with_tensor(Q_B, torch.randn(32, 3)))
    message = refused(llama["base"], adapter, tmp_path)
    assert "A/B rank mismatch" in message and Q_A in message and Q_B in message


def test_rank_differs_from_config(llama, edited, tmp_path):
    message = refused(llama["base"], edited(config=lambda c: {**c, "r": 8}), tmp_path)
    assert "rank 4" in message and "gives 8" in message and Q_A in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_adapter(llama, edited, tmp_path, bad):
    def poison(t):
        t = t.clone()
        t[1, 2] = bad
        return t
    message = refused(llama["base"], edited(tensors=with_tensor(Q_A, poison)), tmp_path)
    assert WEIGHTS in message and Q_A in message and "NaN or Inf" in message
    assert "(row 1 of 4)" in message  # Q_A is (4, 32): the row itself, not a block's bounds past the end


def test_modules_to_save_shape_off(llama, edited, tmp_path):
    adapter = edited(tensors=with_tensor("base_model.model.lm_head.weight", torch.randn(100, 32)))
    message = refused(llama["base"], adapter, tmp_path)
    assert "base_model.model.lm_head.weight" in message and "[100, 32]" in message and "[128, 32]" in message


def test_missing_weights_file(llama, edited, tmp_path):
    adapter = edited()
    os.remove(os.path.join(adapter, WEIGHTS))
    assert "no adapter_model.safetensors" in refused(llama["base"], adapter, tmp_path)


def test_unfoldable_lora_option(llama, edited, tmp_path):
    message = refused(llama["base"], edited(config=lambda c: {**c, "layer_replication": [[0, 2], [0, 2]]}), tmp_path)
    assert "layer_replication" in message and "adapter_config.json" in message


def test_weight_on_dora_or_ia3(llama, adapter, tmp_path):
    ia3 = adapter(llama["base"], IA3Config(target_modules=["k_proj"], feedforward_modules=[]), "ia3")
    assert "no weight to scale" in refused(llama["base"], ia3, tmp_path, "--weight", "0.5")
    dora = adapter(llama["base"], LoraConfig(r=2, use_dora=True, target_modules=["q_proj"]), "dora")
    assert "DoRA" in refused(llama["base"], dora, tmp_path, "--weight", "2")


def test_weight_count_must_match(llama, llama_lora, tmp_path):
    message = refused(llama["base"], llama_lora, tmp_path, "--weight", "0.5", "--weight", "2")
    assert "--weight given 2 times for 1 adapters" in message


def test_output_may_not_be_the_adapter(llama, llama_lora):
    before = digest(llama_lora)
    result = CliRunner().invoke(main, ["fold", llama["base"], llama_lora, llama_lora, "--force", "--quiet"])
    assert result.exit_code == 2 and "overlaps input" in result.output
    assert digest(llama_lora) == before
