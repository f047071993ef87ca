"""Every bad input is refused with a typed error that names the file, field, tensor or model, and in
every case nothing appears at the output path (no `.partial` folder left either) and no input changes."""

from __future__ import annotations

import copy
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import surgery.io.output
import surgery.io.writer
from surgery.errors import InputError, NumericsError, OutputError, SpecError
from surgery.merge.engine import Options, run_merge
from surgery.merge.methods import REGISTRY
from surgery.merge.plan import plan_merge
from surgery.merge.spec import load_spec
from tests.surgery.reference_checkpoints import digest, run_cli

WEIGHTS = "model.safetensors"
TIES = {"merge_method": "ties", "base_model": "models/base",
        "models": [{"model": "models/math", "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": "models/code", "parameters": {"weight": 1.0, "density": 0.5}}]}


def leftovers(out: str) -> list[str]:
    parent, name = os.path.split(os.path.abspath(out))
    return glob.glob(os.path.join(parent, f".{name}.*"))


@contextmanager
def refused(error: type, out: str, *inputs: str):
    """Expect `error`; afterwards nothing is at `out`, no partial folder is left, inputs are unchanged."""
    before = digest(*inputs)
    with pytest.raises(error) as caught:
        yield caught
    assert not os.path.lexists(out)
    assert leftovers(out) == []
    assert digest(*inputs) == before


def attempt(work: str, spec: dict, out: str, **options) -> str:
    """Write spec.yaml beside `work` (whose files are compared before and after), then validate,
    plan and merge it as `surgery merge` does, with relative model paths read from `work`."""
    path = os.path.join(os.path.dirname(work), "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    plan = plan_merge(load_spec(path), path, models_dir=work)
    return run_merge(plan, out, Options(**options))


def with_models(spec: dict, *refs: str) -> dict:
    """A deep copy of `spec` with its models' paths replaced by `refs`."""
    out = copy.deepcopy(spec)
    for entry, ref in zip(out["models"], refs):
        entry["model"] = ref
    return out


def rewrite(folder: str, edit) -> None:
    """Apply `edit` to the folder's state dict and save it back as a single file."""
    path = os.path.join(folder, WEIGHTS)
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# ---- spec errors -------------------------------------------------------------------------------------

def test_missing_model_folder(work, llama, tmp_path):
    out = str(tmp_path / "out")
    with refused(SpecError, out, work) as e:
        attempt(work, with_models(TIES, "models/math", "models/nope"), out)
    assert "spec.yaml: models.1.model: model folder 'models/nope' does not exist" in str(e.value)


def test_unknown_method(work, tmp_path):
    out = str(tmp_path / "out")
    with refused(SpecError, out, work) as e:
        attempt(work, {**TIES, "merge_method": "tie"}, out)
    assert str(e.value).endswith("spec.yaml: merge_method: unknown method 'tie'; known: " + ", ".join(REGISTRY))


def test_unknown_parameter(work, tmp_path):
    out = str(tmp_path / "out")
    spec = with_models(TIES, "models/math", "models/code")
    spec["models"][0]["parameters"] = {"weight": 1.0, "densty": 0.5}
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert "spec.yaml: models.0.parameters.densty: unknown parameter for ties (known: " in str(e.value)
    assert "density" in str(e.value)


def test_unknown_spec_field(work, tmp_path):
    out = str(tmp_path / "out")
    with refused(SpecError, out, work) as e:
        attempt(work, {**TIES, "base_modle": "models/base"}, out)
    assert str(e.value).endswith("spec.yaml: base_modle (line 2): unknown field 'base_modle'")  # keys sorted


@pytest.mark.parametrize("density, field", [
    (1.5, "models.1.parameters.density"),
    ([0.5, 1.2], "models.1.parameters.density.1"),
    ([{"filter": "mlp", "value": 0.0}, {"value": 0.5}], "models.1.parameters.density.0.value"),
])
def test_parameter_out_of_range(work, tmp_path, density, field):
    """A value, a gradient's entry or a condition's value: each located down to the list index."""
    out = str(tmp_path / "out")
    spec = with_models(TIES, "models/math", "models/code")
    spec["models"][1]["parameters"]["density"] = density
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert f"spec.yaml: {field}: must be in (0, 1] (got " in str(e.value)


def test_global_parameter_out_of_range(work, tmp_path):
    out = str(tmp_path / "out")
    spec = {"merge_method": "slerp", "base_model": "models/base", "models": [{"model": "models/math"}],
            "parameters": {"t": 1.5}}
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert str(e.value).endswith("spec.yaml: parameters.t: must be in [0, 1] (got 1.5)")


def test_required_parameter_missing(work, tmp_path):
    out = str(tmp_path / "out")
    spec = with_models(TIES, "models/math", "models/code")
    del spec["models"][1]["parameters"]["weight"]
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert "spec.yaml: models.1.parameters.weight: ties needs 'weight' for model 'models/code'" in str(e.value)


def test_slerp_with_three_models(work, tmp_path):
    out = str(tmp_path / "out")
    spec = {"merge_method": "slerp", "base_model": "models/base", "parameters": {"t": 0.5},
            "models": [{"model": "models/base"}, {"model": "models/math"}, {"model": "models/code"}]}
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert str(e.value).endswith("spec.yaml: models: slerp takes exactly 1 model(s) besides the base_model; "
                                 "got 2 ('models/math', 'models/code')")


# ---- input errors ------------------------------------------------------------------------------------

def test_tensor_missing_from_one_model(work, llama, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(llama["code"], os.path.join(work, "pruned"))
    rewrite(os.path.join(work, "pruned"), lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with refused(InputError, out, work) as e:
        attempt(work, with_models(TIES, "models/math", "pruned"), out)
    assert "tensor 'model.layers.1.mlp.up_proj.weight' is missing from model 'pruned'" in str(e.value)


def test_shapes_differ(work, llama, build, tmp_path):
    """A model with vocab_size 256 beside ones of 128 (the same tokenizer): the vocabulary pre-flight
    names both row counts and the setting that aligns them."""
    out = str(tmp_path / "out")
    build(os.path.join(work, "wide"), "llama", seed=3, vocab_size=256)
    with refused(SpecError, out, work) as e:
        attempt(work, with_models(TIES, "models/math", "wide"), out)
    assert ("tokenizer_source: not set, but model 'wide' (models.1.model) and the base 'models/base' have "
            "different vocabularies (256 vs 128 embedding rows); set tokenizer_source: union") in str(e.value)


def test_truncated_input(work, llama, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(llama["code"], os.path.join(work, "cut"))
    path = os.path.join(work, "cut", WEIGHTS)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1000)
    with refused(InputError, out, work) as e:
        attempt(work, with_models(TIES, "models/math", "cut"), out)
    assert path in str(e.value) and "truncated" in str(e.value)


def overlap_k_into_v(folder: str) -> tuple[str, str, str]:
    """Point layer 0's k_proj at v_proj's bytes in the header (equal shapes): (file, k name, v name)."""
    path = os.path.join(folder, WEIGHTS)
    k, v = "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header[k]["data_offsets"] = list(header[v]["data_offsets"])
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    return path, k, v


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_overlapping_tensor_offsets(llama, tmp_path, command):
    """k_proj's offsets point into v_proj's bytes: refused naming the file and both tensors (before, inspect
    listed it and convert wrote a model whose k_proj equalled v_proj)."""
    folder = shutil.copytree(llama["math"], tmp_path / "bad")
    path, k, v = overlap_k_into_v(str(folder))
    out, before = tmp_path / "out", digest(str(folder))
    args = [command, folder] + ([out, "--dtype", "bfloat16", "--quiet"] if command == "convert" else [])
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}: tensors '{k}' and '{v}' overlap: both hold bytes [")
    assert "re-export or copy the file again" in result.output and "Traceback" not in result.output
    assert not out.exists() and leftovers(str(out)) == [] and digest(str(folder)) == before


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "slerp", "model_stock"])
def test_nan_in_an_input(work, llama, tmp_path, method):
    out = str(tmp_path / "out")
    shutil.copytree(llama["code"], os.path.join(work, "nan"))

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.1.self_attn.q_proj.weight"][3, 4] = float("nan")

    rewrite(os.path.join(work, "nan"), poison)
    params = {"weight": 0.5} if method == "linear" else {"weight": 0.5, "density": 0.5}
    spec = {"merge_method": method, "base_model": "models/base",
            "models": [{"model": "models/math", "parameters": params}, {"model": "nan", "parameters": params}]}
    if method == "slerp":
        spec = {**spec, "models": [{"model": "nan"}], "parameters": {"t": 0.3}}
    if method == "model_stock":
        spec = {**spec, "models": [{"model": "models/math"}, {"model": "nan"}]}
    with refused(NumericsError, out, work) as e:
        attempt(work, spec, out)
    assert "tensor 'model.layers.1.self_attn.q_proj.weight'" in str(e.value)
    assert "input(s) ['nan'] already hold NaN/Inf" in str(e.value)


def test_nan_produced_by_the_merge(work, tmp_path):
    """A lambda too large for float32 overflows in the first tensor written, the embedding."""
    out = str(tmp_path / "out")
    spec = {"merge_method": "task_arithmetic", "base_model": "models/base", "parameters": {"lambda": 1e40},
            "models": [{"model": "models/math", "parameters": {"weight": 1.0}}]}
    with refused(NumericsError, out, work) as e:
        attempt(work, spec, out)
    assert "task_arithmetic produced NaN or Inf in tensor 'model.embed_tokens.weight'" in str(e.value)
    assert "weights too large" in str(e.value) and "Nothing was written" in str(e.value)


def test_a_weight_too_large_for_float32(work, tmp_path):
    """torch refused it mid-merge (exit 1, 'value cannot be converted to type float without overflow')."""
    out = str(tmp_path / "out")
    spec = {"merge_method": "linear", "models": [{"model": "models/math", "parameters": {"weight": 1e40}},
                                                 {"model": "models/code", "parameters": {"weight": 1.0}}]}
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert "spec.yaml: models: linear: weight 1e+40 is too large for float32 arithmetic (at most 3.4e+38)" in str(
        e.value)


def test_weights_summing_to_zero_are_refused_when_planning(work, tmp_path):
    """normalize would divide by 0 (it gave NaN in the first tensor written): the plan says so, reading
    no tensor, with the weights and what to change."""
    out = str(tmp_path / "out")
    spec = {"merge_method": "linear", "parameters": {"normalize": True},
            "models": [{"model": "models/math", "parameters": {"weight": 1.0}},
                       {"model": "models/code", "parameters": {"weight": -1.0}}]}
    with refused(SpecError, out, work) as e:
        attempt(work, spec, out)
    assert str(e.value).endswith("spec.yaml: models: linear: normalize divides by the sum of the weights, which is 0 "
                                 "(1, -1); change a weight or set parameters.normalize: false (tensor "
                                 "'model.embed_tokens.weight')")


# ---- output errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["equal", "inside", "holds"])
@pytest.mark.parametrize("force", [False, True])
def test_output_overlapping_an_input(llama, tmp_path, where, force):
    """The output may not be an input, lie inside one, or contain one, even with force; the spec reads
    the models through a link, the output is named by the real path. (On a copy of the family, so a
    regression cannot destroy the session's models.)"""
    family = tmp_path / "family"
    shutil.copytree(os.path.dirname(llama["base"]), family)
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(family, work / "models")
    base = os.path.realpath(family / "base")
    out = {"equal": base, "inside": os.path.join(base, "merged"), "holds": str(family)}[where]
    before = digest(str(family))
    with pytest.raises(OutputError, match="overlaps input model") as e:
        attempt(str(work), TIES, out, force=force)
    assert base in str(e.value)
    assert not os.path.exists(os.path.join(base, "merged"))
    assert digest(str(family)) == before


def test_existing_output_needs_force(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists; remove it or pass --force") as e:
        attempt(work, TIES, str(out))
    assert str(out) in str(e.value)
    assert os.listdir(out) == ["keep.txt"] and leftovers(str(out)) == []
    attempt(work, TIES, str(out), force=True)
    assert "keep.txt" not in os.listdir(out) and WEIGHTS in os.listdir(out)


def test_disk_full_mid_merge(work, tmp_path, monkeypatch):
    """The writer's files raise ENOSPC once 60 KB are written: OutputError, and the partial folder
    (holding the first shard by then) is removed."""
    out = str(tmp_path / "out")
    room = [60_000]

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            room[0] -= len(data)
            if room[0] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(surgery.io.writer, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    with refused(OutputError, out, work) as e:
        attempt(work, TIES, out, shard_size=20_000)
    assert room[0] < 0
    assert "disk full while writing the merged model" in str(e.value)


def test_disk_full_after_the_last_shard(work, tmp_path, monkeypatch):
    """The shards fit, then config.json does not: still an OutputError, and nothing is left."""
    out = str(tmp_path / "out")

    def full(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(surgery.io.output, "open", full, raising=False)
    with refused(OutputError, out, work) as e:
        attempt(work, TIES, out)
    assert "cannot write the config and tokenizer files (No space left on device)" in str(e.value)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.integration
def test_killed_process_leaves_nothing(build, tmp_path, sig):
    """Kill a `surgery merge` while it writes shards: the output path never appears and the inputs'
    bytes are unchanged. SIGTERM is handled (exit 130, partial folder removed); SIGKILL runs no
    handler, so its hidden partial folder stays until the next run for that output clears it."""
    work = tmp_path / "work"
    big = dict(hidden_size=256, num_hidden_layers=4, vocab_size=4096, intermediate_size=512)
    build(str(work / "base"), "llama", seed=0, **big)
    build(str(work / "math"), "llama", seed=1, **big)
    (work / "spec.yaml").write_text(yaml.safe_dump({**TIES, "base_model": "base", "models": [
        {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}}]}))
    out, before = work / "out", digest(str(work / "base"), str(work / "math"))
    proc = subprocess.Popen([sys.executable, "-m", "surgery.cli", "merge", "spec.yaml", "out", "--quiet",
                             "--block-size", "64K", "--shard-size", "1M"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    partial = work / f".out.partial-{proc.pid}"
    deadline = time.monotonic() + 60
    try:
        while not (partial.is_dir() and glob.glob(str(partial / "*.safetensors"))):
            assert proc.poll() is None, f"merge ended before it could be killed: {proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, "no partial output appeared"
            time.sleep(0.005)
        proc.send_signal(sig)
        assert proc.wait(30) == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert not out.exists()
    assert partial.is_dir() == (sig == signal.SIGKILL)
    assert digest(str(work / "base"), str(work / "math")) == before
    plan = plan_merge(load_spec(str(work / "spec.yaml")), "spec.yaml", models_dir=str(work))
    run_merge(plan, str(out), Options(shard_size=1 << 20))
    assert not partial.exists() and leftovers(str(out)) == []
    shards = glob.glob(str(out / "*.safetensors"))
    assert len(shards) > 1 and all(torch.isfinite(t).all() for f in shards for t in load_file(f).values())
