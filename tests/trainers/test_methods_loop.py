"""The parameter-efficient methods as plug-ins of the shared loop: a run spec names the method, the
loop trains it (the eval loss falls), its final folder holds the adapter and no full model, the
adapter loaded back scores the eval set exactly as the loop last did, and a run stopped and resumed
from a checkpoint ends with the same adapter as one that ran straight through."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.trainers.conftest import spec_dict
from tests.trainers.test_methods_peft import load_saved
from trainers import data, templates
from trainers.loops import train
from trainers.loops.offline import encode_all, evaluate
from trainers.methods import REGISTRY, bottleneck, qlora
from trainers.models import load_tokenizer
from trainers.objectives.sft import pad_token_id
from trainers.spec import parse_run

# method -> (its fields in the spec, learning rate)
RUNS = {
    "lora": ({"r": 4}, 1e-2),
    "qlora": ({"r": 4}, 1e-2),
    "dora": ({"r": 4}, 1e-2),
    "lora_plus": ({"r": 4, "ratio": 4}, 5e-3),
    "vera": ({"r": 16}, 5e-2),
    "ia3": ({}, 0.2),
    "prefix": ({"num_virtual_tokens": 4, "projection_hidden": 16}, 5e-2),
    "p_tuning_v2": ({"num_virtual_tokens": 4}, 0.2),
    "prompt": ({"num_virtual_tokens": 4}, 5e-2),
    "bottleneck": ({"size": 8}, 5e-2),
}


def test_every_parameter_efficient_method_is_run_here():
    """A method added to the registry without a run here fails this test."""
    assert set(REGISTRY) - {"full", "freeze"} == set(RUNS)


@pytest.fixture(scope="module")
def lively(build, tmp_path_factory) -> str:
    """A tiny Llama with weights drawn at std 0.1 (see test_methods_peft), with its ChatML tokenizer."""
    return build(str(tmp_path_factory.mktemp("peft_loop") / "base"), "llama", initializer_range=0.1)


def run_spec(name: str, base: str, **changes):
    fields, lr = RUNS[name]
    spec = spec_dict(base=base, method={"name": name, **fields}, optim={"lr": lr},
                     schedule={"warmup_steps": 0, "total_steps": 6, "cosine": False}, **changes)
    return parse_run(spec, "run.yaml")


def eval_loss_of(model, run) -> float:
    """The loop's own eval loss of `model` over the run's eval set."""
    tokenizer = load_tokenizer(run.spec)
    template = templates.resolve(run.spec.chat_template, tokenizer, run.file)
    sets = [data.read_dataset(p, run.objective.shapes, f"data.eval.{i}") for i, p in enumerate(run.spec.data.eval)]
    examples, _ = encode_all(sets, tokenizer, template, run)
    return evaluate(model, examples, run, 2, pad_token_id(tokenizer), torch.device("cpu"))["eval_loss"]


def logged_eval_losses(out: str) -> list[float]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r["eval_loss"] for r in map(json.loads, f) if "eval_loss" in r]


@pytest.mark.parametrize("name", list(RUNS))
def test_method_runs_through_the_loop(name, workdir, lively):
    run = run_spec(name, lively, eval_every=1)
    final = train(run, quiet=True)
    losses = logged_eval_losses("out/run")
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1, losses
    files = set(os.listdir(final))
    assert "model.safetensors" not in files
    assert {bottleneck.WEIGHTS_FILE} <= files if name == "bottleneck" else {"adapter_model.safetensors"} <= files
    if name == "qlora":
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(qlora.load_model(lively, run.method_config, torch.float32), final)
    else:
        loaded = load_saved(name, lively, final)
    assert eval_loss_of(loaded, run) == pytest.approx(losses[-1], abs=1e-5)


@pytest.mark.parametrize("name", ["lora", "bottleneck"])
def test_resumed_run_ends_with_the_same_adapter(name, workdir, lively):
    """The loop restores the method's trainable tensors by name: attach must name them the same way each time."""
    weights = "adapter_model.safetensors" if name != "bottleneck" else bottleneck.WEIGHTS_FILE
    straight = load_file(os.path.join(train(run_spec(name, lively, out="out/straight"), quiet=True), weights))
    run = run_spec(name, lively, out="out/stopped", save_every=3)
    stopped = train(run, stop_after=3, quiet=True)
    resumed = load_file(os.path.join(train(run, resume=stopped, quiet=True), weights))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
