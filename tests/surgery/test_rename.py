"""`surgery rename`: tensors keep their bytes under the new names (checked against `re.sub` applied in
the test), a rename and its inverse give a model whose logits equal the original's, and collisions,
bad patterns and unused maps are refused before anything is written."""

from __future__ import annotations

import re

import pytest
import torch

from surgery.ops.rename import parse_maps, renamed
from tests.surgery.reference_checkpoints import logits, run_cli, state_dict

FORWARD = r"^model\.layers\.(\d+)\.self_attn\.=model.blocks.\1.attention."
BACKWARD = r"^model\.blocks\.(\d+)\.attention\.=model.layers.\1.self_attn."


def test_rename_keeps_bytes_and_round_trips(llama_bf16, tmp_path):
    there, back = tmp_path / "there", tmp_path / "back"
    assert run_cli("rename", llama_bf16["math"], there, "--map", FORWARD, "--quiet").exit_code == 0
    source, moved = state_dict(llama_bf16["math"]), state_dict(there)
    expected = {re.sub(r"^model\.layers\.(\d+)\.self_attn\.", r"model.blocks.\1.attention.", n): t
                for n, t in source.items()}
    assert sorted(moved) == sorted(expected) and any(".attention.q_proj" in n for n in moved)
    assert all(moved[n].dtype == t.dtype and torch.equal(moved[n], t) for n, t in expected.items())
    result = run_cli("rename", there, back, "--map", BACKWARD, "--quiet")
    assert result.exit_code == 0, result.output
    assert torch.equal(logits(back), logits(llama_bf16["math"]))


def test_maps_apply_in_order():
    maps = parse_maps([r"a\.(\d)=b.\1", r"b\.1=c"])
    assert renamed(["a.1", "a.2", "x"], maps) == {"a.1": "c", "a.2": "b.2", "x": "x"}


@pytest.mark.parametrize("maps, message", [
    ([r"k_proj=q_proj"], "'model.layers.0.self_attn.k_proj.weight' and 'model.layers.0.self_attn.q_proj.weight'"),
    ([r"(unclosed=x"], "not a valid regular expression"),
    ([r"no_such_tensor=x"], "matches no tensor name"),
    ([r"^.*$="], "empty name"),
    ([r"nothing-to-split"], "write REGEX=REPLACEMENT"),
    ([r"(q)_proj=\2"], "bad replacement"),
])
def test_refusals_write_nothing(llama, tmp_path, maps, message):
    out = tmp_path / "out"
    args = [a for m in maps for a in ("--map", m)]
    result = run_cli("rename", llama["base"], out, *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not out.exists()


def test_float64_values_are_kept_exactly(build, tmp_path):
    source = build(str(tmp_path / "f64"), "llama", seed=5, dtype=torch.float64)
    out = tmp_path / "out"
    assert run_cli("rename", source, out, "--map", r"^lm_head\.=output.", "--quiet").exit_code == 0
    renamed_sd, source_sd = state_dict(out), state_dict(source)
    assert torch.equal(renamed_sd["output.weight"], source_sd["lm_head.weight"])
    assert all(torch.equal(renamed_sd[n], t) for n, t in source_sd.items() if n != "lm_head.weight")
