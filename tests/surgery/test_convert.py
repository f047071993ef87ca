"""`surgery convert`: every floating tensor is what `Tensor.to(dtype)` gives (compared bit for bit
with the reference safetensors loader), the config records the dtype, transformers loads the result,
and a bad dtype or input writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from surgery.errors import InputError
from surgery.ops.convert import plan_convert
from tests.surgery.reference_checkpoints import logits, run_cli, state_dict


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_float32_to_half_casts_as_torch_does(llama, tmp_path, dtype):
    out = tmp_path / "out"
    result = run_cli("convert", llama["math"], out, "--dtype", dtype, "--quiet")
    assert result.exit_code == 0, result.output
    source, converted = state_dict(llama["math"]), state_dict(out)
    assert sorted(source) == sorted(converted)
    want = getattr(torch, dtype)
    for name, tensor in source.items():
        assert converted[name].dtype == want, name
        assert torch.equal(converted[name], tensor.to(want)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    assert (out / "tokenizer.json").is_file()
    assert torch.allclose(logits(out), logits(llama["math"]), atol=0.05)  # the same model, at half precision


def test_bfloat16_to_float32_is_exact_and_reshards(llama_bf16, tmp_path):
    out = tmp_path / "out"
    result = run_cli("convert", llama_bf16["base"], out, "--dtype", "float32", "--shard-size", "40K", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors.index.json").is_file()
    source, converted = state_dict(llama_bf16["base"]), state_dict(out)
    assert sorted(source) == sorted(converted)
    for name, tensor in source.items():
        assert converted[name].dtype == torch.float32 and torch.equal(converted[name].to(torch.bfloat16), tensor)
    assert torch.equal(logits(out), logits(llama_bf16["base"]))


def test_sharded_input(llama_sharded, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", llama_sharded["code"], out, "--dtype", "float16", "--quiet").exit_code == 0
    source, converted = state_dict(llama_sharded["code"]), state_dict(out)
    assert sorted(source) == sorted(converted)
    assert all(torch.equal(converted[n], t.half()) for n, t in source.items())


def test_unknown_dtype_and_missing_input(llama, tmp_path):
    with pytest.raises(InputError, match="--dtype 'int4'"):
        plan_convert(llama["base"], "int4")
    out = tmp_path / "out"
    result = run_cli("convert", tmp_path / "nope", out, "--dtype", "bfloat16")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not out.exists()


def test_input_is_never_the_output(llama, tmp_path):
    result = run_cli("convert", llama["base"], llama["base"], "--dtype", "bfloat16", "--force")
    assert result.exit_code == 2 and "overlaps input model" in result.stderr


def test_float64_stays_exact(build, tmp_path):
    source = build(str(tmp_path / "f64"), "llama", seed=5, dtype=torch.float64)
    for target in ("float64", "float32"):
        out = tmp_path / target
        assert run_cli("convert", source, out, "--dtype", target, "--quiet").exit_code == 0
        want = getattr(torch, target)
        assert all(torch.equal(state_dict(out)[n], t.to(want)) for n, t in state_dict(source).items())
