"""bitsandbytes checkpoints (4-bit NF4 and FP4, with and without double quantization, and 8-bit) as
transformers saves them are read dequantized, equal to transformers' own `dequantize()`, whole or a
block of rows at a time; a QLoRA user's 4-bit base merges with its adapter directly, as the
dequantized base would; what cannot be dequantized is refused naming the tensor and the format."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("bitsandbytes")

from surgery.errors import InputError  # noqa: E402
from surgery.io.bnb_reader import BitsAndBytesFolder  # noqa: E402
from surgery.io.opener import open_model  # noqa: E402
from tests.surgery.adapters.conftest import save_adapter  # noqa: E402
from tests.surgery.reference_checkpoints import digest, run_cli  # noqa: E402

FORMATS = {
    "nf4_double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "int8": dict(load_in_8bit=True),
}


def quantized_model(source: str, settings: dict):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(**settings, bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(source, quantization_config=config, device_map="cpu",
                                                dtype=torch.float32)


@pytest.fixture(scope="module")
def saved(llama, tmp_path_factory) -> dict[str, str]:
    """Each format saved by transformers from the tiny Llama base, and 'dequantized': the nf4 model's
    own dequantized weights as a plain folder (the reference a QLoRA merge would otherwise need)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("bnb")
    out = {}
    for name, settings in FORMATS.items():
        quantized_model(llama["base"], settings).save_pretrained(root / name)
        out[name] = str(root / name)
    model = AutoModelForCausalLM.from_pretrained(out["nf4_double"], device_map="cpu")
    model.dequantize()
    plain = AutoModelForCausalLM.from_config(model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}))
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(root / "dequantized")
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(llama["base"], file)):
            shutil.copy(os.path.join(llama["base"], file), root / "dequantized" / file)
    out["dequantized"] = str(root / "dequantized")
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_values_are_transformers_dequantization(saved, fmt):
    from transformers import AutoModelForCausalLM

    folder = open_model(saved[fmt])
    assert isinstance(folder, BitsAndBytesFolder) and "quantization_config" not in folder.config
    model = AutoModelForCausalLM.from_pretrained(saved[fmt], device_map="cpu")
    model.dequantize()
    expected = model.state_dict()
    assert set(folder.tensors) == set(expected)
    for name in folder.tensors:
        assert torch.equal(folder.read(name), expected[name].to(folder.tensors[name].dtype)), name
    kind = {"nf4_double": "nf4", "fp4": "fp4", "int8": "int8"}[fmt]
    assert folder.encodings["model.layers.0.self_attn.q_proj.weight"] == kind
    assert "model.embed_tokens.weight" not in folder.encodings  # stored as it was


@pytest.mark.parametrize("fmt", ["nf4_double", "int8"])
def test_blocks_of_rows_are_the_rows_of_the_whole(saved, fmt):
    folder = open_model(saved[fmt])
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        whole = folder.read(name)
        for span in [(0, 1), (3, 11), (whole.shape[0] - 2, whole.shape[0])]:
            assert torch.equal(folder.read(name, span), whole[span[0]:span[1]])


@pytest.mark.integration
def test_a_qlora_base_and_its_adapter_merge_directly(saved, tmp_path):
    """fold and `base+adapter` on the 4-bit folder give what they give on its dequantized weights."""
    from peft import LoraConfig

    adapter = save_adapter(saved["dequantized"], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]),
                           str(tmp_path / "adapter"))
    before = digest(saved["nf4_double"])
    for base, out in [(saved["nf4_double"], "a"), (saved["dequantized"], "b")]:
        result = run_cli("fold", base, adapter, str(tmp_path / out), "--quiet")
        assert result.exit_code == 0, result.output
    a, b = open_model(str(tmp_path / "a")), open_model(str(tmp_path / "b"))
    assert all(torch.equal(a.read(n), b.read(n)) for n in b.tensors)
    assert "quantization_config" not in json.loads((tmp_path / "a" / "config.json").read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n"
                    f"  - model: {saved['nf4_double']}+{adapter}\n  - model: {saved['int8']}\n")
    result = run_cli("merge", str(spec), str(tmp_path / "merged"), "--quiet")
    assert result.exit_code == 0, result.output
    merged, int8 = open_model(str(tmp_path / "merged")), open_model(saved["int8"])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(merged.read(name), (a.read(name) + int8.read(name)) / 2)
    assert digest(saved["nf4_double"]) == before


def test_what_cannot_be_dequantized_is_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(saved["nf4_double"], broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="tensor 'model.layers.1.mlp.up_proj.weight' is stored as uint8 without the "
                                         "bitsandbytes state"):
        open_model(str(broken))
    result = run_cli("convert", str(broken), str(tmp_path / "out"), "--dtype", "float32")
    assert result.exit_code == 2 and "up_proj.weight" in result.stderr and not (tmp_path / "out").exists()
    gptq = tmp_path / "gptq"
    shutil.copytree(saved["int8"], gptq)
    config = json.loads((gptq / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (gptq / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="quant_method 'gptq', which cannot be read"):
        open_model(str(gptq))
