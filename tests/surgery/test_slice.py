"""`surgery slice`: layer k of the output holds exactly the tensors of the source layer its range
names, the config's layer count follows, and transformers' logits equal those of the source model
with its decoder layers re-stacked in torch (an independent construction). Bad ranges write nothing."""

from __future__ import annotations

import json

import pytest
import torch

from surgery.errors import SpecError
from surgery.ops.layer_slice import parse_ranges
from tests.surgery.reference_checkpoints import logits, model_logits, run_cli, state_dict


def restacked_logits(folder: str, order: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    stack, attr = (model.transformer, "h") if hasattr(model, "transformer") else (model.model, "layers")
    layers = getattr(stack, attr)
    setattr(stack, attr, torch.nn.ModuleList([layers[i] for i in order]))
    model.config.num_hidden_layers = len(order)
    return model_logits(model)


def test_gpt2_naming(gpt2, tmp_path):
    out = tmp_path / "out"
    assert run_cli("slice", gpt2["math"], out, "--layers", "1:2,0:2", "--quiet").exit_code == 0
    assert json.loads((out / "config.json").read_text())["n_layer"] == 3
    assert torch.equal(state_dict(out)["transformer.h.0.attn.c_attn.weight"],
                       state_dict(gpt2["math"])["transformer.h.1.attn.c_attn.weight"])
    assert torch.allclose(logits(out), restacked_logits(gpt2["math"], [1, 0, 1]), atol=1e-5)


@pytest.mark.parametrize("ranges, order", [("0:2,1:2,0:1", [0, 1, 1, 0]), ("1:2", [1]), ("0,0:2", [0, 0, 1])])
def test_slices_repeat_and_drop_layers(llama, tmp_path, ranges, order):
    out = tmp_path / "out"
    result = run_cli("slice", llama["chat"], out, "--layers", ranges, "--quiet")
    assert result.exit_code == 0, result.output
    source, sliced = state_dict(llama["chat"]), state_dict(out)
    for k, src in enumerate(order):
        for name, tensor in source.items():
            if f"layers.{src}." in name:
                assert torch.equal(sliced[name.replace(f"layers.{src}.", f"layers.{k}.")], tensor), name
    outside = {n: t for n, t in source.items() if ".layers." not in n}
    assert all(torch.equal(sliced[n], t) for n, t in outside.items())
    assert len(sliced) == len(outside) + 9 * len(order)  # 9 tensors per Llama layer
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == len(order)
    assert torch.allclose(logits(out), restacked_logits(llama["chat"], order), atol=1e-5)


@pytest.mark.parametrize("text, message", [
    ("2:1", "0 <= START < END"), ("0:3", "the model has 2 layers"), ("a:b", "not a layer range"),
    (",", "no layer range"), ("0:1:2", "not a layer range"), ("0:1,,1:2", "item 2 of 3 is empty"),
    ("0:1, ", "item 2 of 2 is empty"),
])
def test_bad_ranges_write_nothing(llama, tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        parse_ranges(text, 2)
    out = tmp_path / "out"
    result = run_cli("slice", llama["base"], out, "--layers", text)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.startswith("error: --layers")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
