"""The registry of adapter kinds: every kind is one module with one `KIND`, every change the mapping
produces has exactly one fold, and a change no kind folds is refused with its adapter file and module
named (never folded as some other kind)."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest
from click.testing import CliRunner

from surgery.adapters.config import raw_config
from surgery.adapters.folded_model import FoldedModel
from surgery.adapters.kinds import DELTAS, KINDS, NAMES, PEFT_TYPES, kind_of_delta
from surgery.cli import main
from surgery.errors import InputError
from surgery.io.reader import ModelFolder
from tests.surgery.reference_checkpoints import digest

Q = "model.layers.0.self_attn.q_proj.weight"


def test_registry_keys_are_module_names():
    assert tuple(KINDS) == NAMES
    for name, kind in KINDS.items():
        assert kind.name == name and kind.folds
        assert (kind.read_config is None) == (kind.map_module is None) == (kind.peft_type is None)
    assert sum(len(k.folds) for k in KINDS.values()) == len(DELTAS)  # no change kind folded by two kinds
    assert list(PEFT_TYPES) == ["LORA", "IA3", "VERA"]


def test_unknown_change_kind_is_refused_when_read(llama, llama_lora):
    """A change whose kind has no fold raises, naming the adapter file and module; before the registry,
    the fold's last branch treated any such change as VeRA."""
    folded = FoldedModel(ModelFolder(llama["base"]), [(llama_lora, 1.0)])
    deltas = folded.adapters[0].deltas
    deltas[Q] = dataclasses.replace(deltas[Q], kind="loha")
    with pytest.raises(InputError) as e:
        folded.read(Q, (0, 4))
    message = str(e.value)
    assert "adapter_model.safetensors: module 'model.layers.0.self_attn.q_proj'" in message
    assert "'loha' has no fold" in message and "lora, lora_bias, dora" in message
    folded.close()


def test_unregistered_kind_is_refused_before_writing(llama, llama_lora, tmp_path, monkeypatch):
    """With LoRA's fold taken out of the registry, `surgery fold` of a LoRA adapter exits 2 before any
    byte is written: the check runs when the adapter is opened."""
    monkeypatch.delitem(DELTAS, "lora")
    out = tmp_path / "out"
    before = digest(llama["base"]), digest(llama_lora)
    result = CliRunner().invoke(main, ["fold", llama["base"], llama_lora, str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "change of kind 'lora' has no fold" in result.output and "q_proj" in result.output
    assert not out.exists() and not glob.glob(str(tmp_path / ".out.*"))
    assert (digest(llama["base"]), digest(llama_lora)) == before


def test_kind_of_delta_lists_the_known_kinds():
    with pytest.raises(InputError, match=r"^x.safetensors: module 'm': change of kind 'lokr' has no fold; the kinds"):
        kind_of_delta("lokr", "x.safetensors: module 'm'")
    assert kind_of_delta("ia3_ff", "here").name == "ia3" and kind_of_delta("dora", "here").title == "DoRA"


def test_each_peft_type_is_read_by_its_kind(llama_lora):
    assert raw_config(llama_lora)["peft_type"] == "LORA"
    assert PEFT_TYPES["LORA"].read_config(llama_lora, os.path.join(llama_lora, "x"), raw_config(llama_lora)).r == 4
