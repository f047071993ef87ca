"""The `surgery` command line, driven through click's CliRunner: merge, --dry-run, --force, errors as
one located line with exit code 2 (a traceback only with --debug), inspect in text and JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import surgery
import surgery.merge.engine
from surgery.cli import main
from surgery.diagnose.report import human
from surgery.io.reader import ModelFolder

MERGES = Path(__file__).resolve().parents[2] / "merges"


@pytest.fixture(autouse=True)
def keep_sigterm():
    """`surgery merge` installs a SIGTERM handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def surgery_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def merge_example(work: str, out, *flags: str, spec: str = "ties-example.yaml"):
    return surgery_cli("merge", MERGES / spec, out, "--models-dir", work, "--quiet", *flags)


def test_merge_an_example_spec(work, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    result = merge_example(work, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}"
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
        assert torch.isfinite(model(ids, labels=ids).loss)


def test_dry_run_prints_the_plan_and_writes_nothing(work, llama, tmp_path):
    """21 tensors (embedding, 2 layers of 9, final norm, head); reads the base and three fine-tunes,
    writes one model's bytes."""
    out = tmp_path / "out"
    result = merge_example(work, out, "--dry-run", "--block-size", "1M")
    assert result.exit_code == 0, result.output
    size = sum(i.nbytes for i in ModelFolder(llama["base"]).tensors.values())
    text = result.stdout
    assert "method      ties: trim by magnitude" in text
    assert "tensors     21 to write, 2 layers" in text
    assert f"read        {human(4 * size)}" in text
    assert f"write       {human(size)} in shards of at most 5.0 GiB" in text
    assert "peak memory about " in text and "(block size 1.0 MiB)" in text
    assert not out.exists() and os.listdir(tmp_path) == ["work"]


@pytest.mark.parametrize("content, message", [
    ("merge_method: ties\nmodels: [{model: models/math, parameters: {weight: 1, density: 1.5}}]\n"
     "base_model: models/base\n", "spec.yaml: models.0.parameters.density: must be in (0, 1] (got 1.5)"),
    ("merge_method: ties\nmodels: [\n", "spec.yaml: line "),
    ("merge_method: soup\nmodels: [{model: models/math}]\n", "spec.yaml: merge_method: unknown method 'soup'"),
    ("merge_method: linear\nmodels: [{model: models/gone, parameters: {weight: 1}}]\n",
     "spec.yaml: models.0.model: model folder 'models/gone' does not exist"),
])
def test_bad_spec_one_line_exit_2(work, tmp_path, content, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    result = surgery_cli("merge", spec, tmp_path / "out", "--models-dir", work, "--quiet")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_missing_spec_file(tmp_path):
    result = surgery_cli("merge", tmp_path / "nope.yaml", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such spec file"


def test_debug_shows_the_traceback(work, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("merge_method: soup\nmodels: [{model: models/math}]\n")
    result = surgery_cli("merge", spec, tmp_path / "out", "--models-dir", work, "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "SpecError" in result.stderr


def test_internal_error_exit_1(work, tmp_path, monkeypatch):
    """A bug (any exception that is not a SurgeryError) exits 1 and points at --debug."""
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(surgery.merge.engine, "run_merge", broken)
    result = merge_example(work, tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.strip() == "internal error: RuntimeError: boom (run with --debug for the traceback)"


def test_bad_size_names_the_flag(work, tmp_path):
    result = merge_example(work, tmp_path / "out", "--shard-size", "lots")
    assert result.exit_code == 2
    assert "--shard-size" in result.stderr and "'lots' is not a size" in result.stderr


def test_shard_size_flag(work, tmp_path):
    out = tmp_path / "out"
    assert merge_example(work, out, "--shard-size", "20K").exit_code == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


def test_dtype_flag_overrides_the_spec(work, tmp_path):
    """merges/linear.yaml says float32; --dtype float16 wins, for the tensors and the config."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert merge_example(work, out, "--dtype", "float16", spec="linear.yaml").exit_code == 0
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float16}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"


def test_force_replaces_an_existing_output(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = merge_example(work, out)
    assert result.exit_code == 2 and "already exists; remove it or pass --force" in result.stderr
    assert os.listdir(out) == ["old.txt"]
    result = merge_example(work, out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device(work, tmp_path):
    result = merge_example(work, tmp_path / "out", "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


@pytest.fixture
def merged(work, tmp_path) -> Path:
    out = tmp_path / "merged"
    assert merge_example(work, out, spec="linear.yaml").exit_code == 0
    return out


def test_inspect_text(merged, llama):
    """Tensor names with dtype and shape, the parameter count with thousands separators, provenance."""
    result = surgery_cli("inspect", merged)
    assert result.exit_code == 0, result.output
    count = sum(i.numel for i in ModelFolder(llama["base"]).tensors.values())
    text = result.stdout
    assert f"parameters  {count:,} (" in text
    assert re.search(r"\n    model\.layers\.1\.self_attn\.q_proj\.weight +float32 +\[32, 32\]\n", text)
    assert "method: linear" in text and f"version: {surgery.__version__}" in text
    assert "spec_sha256: " in text
    assert "model.layers.0" not in surgery_cli("inspect", merged, "--no-tensors").stdout


def test_inspect_json(merged, llama):
    result = surgery_cli("inspect", merged, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    base = ModelFolder(llama["base"])
    assert report["parameters"] == sum(i.numel for i in base.tensors.values())
    assert {t["name"]: tuple(t["shape"]) for t in report["tensors"]} == {n: i.shape for n, i in base.tensors.items()}
    assert report["files"] == ["model.safetensors"]
    assert report["provenance"]["surgery.method"] == "linear"
    assert json.loads(report["provenance"]["surgery.spec"])["merge_method"] == "linear"


def test_inspect_a_missing_folder(tmp_path):
    result = surgery_cli("inspect", tmp_path / "nothing")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: model folder") and "does not exist" in result.stderr


def test_version():
    result = surgery_cli("--version")
    assert result.exit_code == 0 and surgery.__version__ in result.stdout


def _cosines(a: str, b: str) -> dict[str, float]:
    """cos(A, B) of each tensor in float64, by the reference loader: SLERP's test for colinear inputs."""
    from safetensors.torch import load_file

    x, y = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    return {n: float(x[n].double().flatten() @ y[n].double().flatten() / (x[n].double().norm() * y[n].double().norm()))
            for n in x}


def test_slerp_reports_the_tensors_that_fell_back_to_linear_interpolation(llama, tmp_path):
    """The tiny fine-tunes are nearly colinear with their base, except the q projections made random here:
    SLERP interpolates those and falls back to linear interpolation on the rest, and says how many."""
    from safetensors.torch import load_file, save_file

    far = shutil.copytree(llama["math"], tmp_path / "far")
    tensors = load_file(far / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name in [n for n in tensors if "q_proj" in n]:
        tensors[name] = torch.randn(tensors[name].shape, generator=generator) * 0.02
    save_file(tensors, far / "model.safetensors", metadata={"format": "pt"})
    cosines = _cosines(llama["base"], str(far))
    colinear = sum(abs(c) > 0.9995 for c in cosines.values())  # SLERP's threshold, as mergekit's
    assert 0 < colinear < len(cosines)
    spec = tmp_path / "slerp.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "slerp", "base_model": llama["base"], "parameters": {"t": 0.3},
                                    "models": [{"model": str(far)}]}))
    result = surgery_cli("merge", spec, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert (f"warning: slerp fell back to linear interpolation on {colinear} of {len(cosines)} tensors (their two "
            "inputs are nearly colinear, |cos| > 0.9995)") in result.stderr


def test_slerp_dry_run_knows_a_model_merged_with_itself_falls_back_everywhere(llama, tmp_path):
    os.symlink(llama["base"], tmp_path / "same")
    spec = tmp_path / "slerp.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "slerp", "base_model": llama["base"], "parameters": {"t": 0.5},
                                    "models": [{"model": str(tmp_path / "same")}]}))
    result = surgery_cli("merge", spec, tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    count = len(_cosines(llama["base"], llama["base"]))
    assert (f"fallback    {count} of {count} tensors fall back to linear interpolation: their inputs are the same "
            "files") in result.stdout
    result = surgery_cli("merge", spec, tmp_path / "out", "--quiet")
    assert f"warning: slerp fell back to linear interpolation on {count} of {count} tensors" in result.stderr
