"""Checkpoint folders: what loads, and the content hash the results store is keyed by."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from evals.scoring.checkpoints import lineage, open_checkpoint
from surgery.errors import InputError


def _copy_with_change(src: str, dst: str, delta: float) -> str:
    shutil.copytree(src, dst)
    file = os.path.join(dst, "model.safetensors")
    tensors = load_file(file)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += delta
    save_file(tensors, file, metadata={"format": "pt"})
    return dst


def test_same_weights_same_hash_wherever_and_however_stored(char_model, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(char_model).save_pretrained(sharded, max_shard_size="300KB")
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 1
    copy = shutil.copytree(char_model, tmp_path / "copy")
    assert open_checkpoint(str(sharded)).hash == open_checkpoint(str(copy)).hash == open_checkpoint(char_model).hash


def test_a_changed_weight_changes_the_hash(char_model, tmp_path):
    changed = _copy_with_change(char_model, str(tmp_path / "changed"), 1e-3)
    assert open_checkpoint(changed).hash != open_checkpoint(char_model).hash


def test_a_folder_without_config_is_refused(char_model, tmp_path):
    folder = shutil.copytree(char_model, tmp_path / "noconfig")
    os.remove(folder / "config.json")
    with pytest.raises(InputError, match="no config.json"):
        open_checkpoint(str(folder))


def _adapter(base: str, folder) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    return str(folder)


def test_an_adapter_hashes_with_its_base_and_needs_it(char_model, tmp_path):
    adapter = _adapter(char_model, tmp_path / "adapter")
    opened = open_checkpoint(adapter)
    assert opened.base.hash == open_checkpoint(char_model).hash and opened.hash != opened.base.hash
    assert lineage(opened) == {"adapter_of": char_model}
    config = os.path.join(adapter, "adapter_config.json")
    with open(config) as f:
        settings = json.load(f)
    with open(config, "w") as f:
        json.dump({**settings, "base_model_name_or_path": "org/not-here"}, f)
    with pytest.raises(InputError, match="names base 'org/not-here', which is not a local folder"):
        open_checkpoint(adapter)


def test_lineage_reads_training_and_merge_records(char_model, tmp_path):
    folder = _copy_with_change(char_model, str(tmp_path / "trained"), 0.0)
    with open(os.path.join(folder, "lineage.json"), "w") as f:
        json.dump({"base": char_model, "method": {"name": "full"}}, f)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt", "surgery.method": "ties"})
    found = lineage(open_checkpoint(folder))
    assert found["training"]["method"] == {"name": "full"} and found["merge"] == {"surgery.method": "ties"}
