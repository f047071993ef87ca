"""An adapter as a merge input (`base+adapter`, mergekit's syntax) equals the same merge done on the
folded model written to disk first; `surgery fold` writes a loadable, sharded, provenance-stamped
folder; `surgery inspect` describes an adapter folder."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from surgery.cli import main
from surgery.errors import SpecError
from surgery.io.reader import ModelFolder
from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import load_spec


def write_spec(folder, models: list[str], base: str, method: str = "task_arithmetic") -> str:
    spec = {"merge_method": method, "base_model": base,
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, (0.6, 0.5))]}
    path = os.path.join(folder, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


def merged(spec: str, out: str, block: int = 4096) -> dict[str, torch.Tensor]:
    run_merge(plan_merge(load_spec(spec), spec), out, Options(block_bytes=block))
    return load_file(os.path.join(out, "model.safetensors"))


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_adapter_as_merge_input_equals_folded_on_disk(llama, llama_lora, tmp_path, method):
    base, math = llama["base"], llama["math"]
    folded = str(tmp_path / "folded")
    result = CliRunner().invoke(main, ["fold", base, llama_lora, folded, "--quiet"])
    assert result.exit_code == 0, result.output
    on_the_fly = merged(write_spec(tmp_path, [f"{base}+{llama_lora}", math], base, method), str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    from_disk = merged(write_spec(tmp_path / "b", [folded, math], base, method), str(tmp_path / "b" / "out"))
    assert on_the_fly.keys() == from_disk.keys()
    for name in on_the_fly:
        assert torch.equal(on_the_fly[name], from_disk[name]), name
    without = merged(write_spec(tmp_path / "b", [base, math], base, method), str(tmp_path / "b" / "plain"))
    assert not torch.equal(without["model.layers.0.self_attn.q_proj.weight"],
                           on_the_fly["model.layers.0.self_attn.q_proj.weight"])


def test_two_adapters_in_one_reference_is_a_spec_error(llama, llama_lora, tmp_path):
    spec = write_spec(tmp_path, [f"{llama['base']}+{llama_lora}+{llama_lora}", llama["math"]], llama["base"])
    with pytest.raises(SpecError, match=r"models\.0\.model: .* names 2 adapters"):
        plan_merge(load_spec(spec), spec)


def test_fold_cli_writes_shards_config_tokenizer_and_provenance(llama, llama_lora, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["fold", llama["base"], llama_lora, str(out), "--shard-size", "30K",
                                       "--dtype", "bfloat16", "--quiet"])
    assert result.exit_code == 0, result.output
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files and "config.json" in files
    folder = ModelFolder(str(out))
    assert len({i.file for i in folder.tensors.values()}) > 1
    assert {i.dtype for i in folder.tensors.values()} == {torch.bfloat16}
    assert folder.metadata["surgery.models"] == f"base={llama['base']},adapter={llama_lora}"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 2


def test_fold_is_called_fold_in_its_progress_bar_and_provenance(llama, llama_lora, tmp_path):
    """Not `merge:` and `method: passthrough` with a `base+adapter=...` model: the base and the adapter
    are named, the spec's base_model naming the base among them (as a merge's provenance does)."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["fold", llama["base"], llama_lora, str(out), "--weight", "0.5"])
    assert result.exit_code == 0, result.output
    assert "fold:" in result.stderr and "merge:" not in result.stderr
    result = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    provenance = json.loads(result.output)["provenance"]
    assert provenance["surgery.method"] == "fold"
    assert provenance["surgery.models"] == f"base={llama['base']},adapter={llama_lora}"
    spec = json.loads(provenance["surgery.spec"])
    assert spec == {"base_model": "base", "adapters": [{"model": "adapter", "weight": 0.5}]}
    assert provenance["surgery.spec_sha256"] == hashlib.sha256(provenance["surgery.spec"].encode()).hexdigest()
    text = CliRunner().invoke(main, ["inspect", str(out), "--no-tensors"]).output
    assert "method: fold" in text and "passthrough" not in text and "+" not in text.split("models: ")[1].split()[0]


def test_inspect_adapter(llama_lora):
    result = CliRunner().invoke(main, ["inspect", llama_lora, "--json"])
    assert result.exit_code == 0, result.output
    adapter = json.loads(result.output)["adapter"]
    # r=4 on q_proj (32x32) and v_proj (16x32) of 2 layers: 4*(32+32) + 4*(32+16) per layer; lm_head 128x32
    assert adapter["type"] == "LORA" and adapter["ranks"] == [4] and adapter["alpha"] == 8
    assert adapter["targets"] == ["q_proj", "v_proj"] and adapter["modules"] == 4
    assert adapter["trainable_parameters"] == 2 * (4 * 64 + 4 * 48) + 128 * 32
    text = CliRunner().invoke(main, ["inspect", llama_lora, "--no-tensors"]).output
    assert "adapter" in text and "q_proj" in text


def test_inspect_adapter_that_cannot_be_folded(edited):
    adapter = edited(config=lambda c: {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8})
    result = CliRunner().invoke(main, ["inspect", adapter, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["adapter"]
    assert summary["type"] == "PROMPT_TUNING" and "virtual tokens" in summary["foldable"]
