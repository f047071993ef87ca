"""The preference objectives through the shared loop on the tiny base: the chosen-over-rejected margin
and the preference accuracy on held-out pairs (prompts with words never trained on) rise; DPO with
LoRA takes its reference from the policy with the adapter switched off, loading one model only; and
bad inputs (rows, reference models, a loss gone NaN) stop with a located message."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from surgery.errors import InputError, NumericsError, SpecError
from tests.trainers.conftest import spec_dict
from trainers import models, reference
from trainers.loops import train
from trainers.objectives import dpo
from trainers.spec import parse_run

# objective -> (its fields, method, learning rate)
RUNS = {
    "dpo": ({"beta": 0.5}, {"name": "full"}, 1e-2),
    "dpo_lora": ({"beta": 0.5}, {"name": "lora", "r": 8}, 1e-2),
    "ipo": ({"beta": 0.1}, {"name": "full"}, 3e-3),
    "simpo": ({"beta": 2.0, "gamma": 1.0}, {"name": "full"}, 3e-3),
    "orpo": ({"lam": 5.0}, {"name": "full"}, 1e-2),  # at lam <= 1 the SFT term dominates this toy set
    "kto": ({"beta": 0.5}, {"name": "full"}, 1e-2),
}


def preference_spec(name: str, steps: int = 12, **changes) -> dict:
    fields, method, lr = RUNS[name]
    objective = name.removesuffix("_lora")
    data = "kto" if objective == "kto" else "prefs"
    spec = spec_dict(objective={"name": objective, **fields}, method=method, optim={"lr": lr, "weight_decay": 0.0},
                     data={"train": f"runs/data/{data}.jsonl", "eval": f"runs/data/{data}_eval.jsonl"},
                     schedule={"warmup_steps": 1, "total_steps": steps}, batch={"size": 8, "max_length": 64},
                     eval_every=1, out=f"out/{name}")
    return {**spec, **changes}


def evals(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if "eval_loss" in r]


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.integration
def test_margin_and_held_out_accuracy_rise(name, workdir, monkeypatch):
    """From the first evaluation (after step 1) to the last (step 12), on held-out pairs."""
    loads = []
    real = models.load_weights
    monkeypatch.setattr(models, "load_weights", lambda run, path: loads.append(path) or real(run, path))
    train(parse_run(preference_spec(name), "run.yaml"), quiet=True)
    scores = evals(f"out/{name}")
    first, last = scores[0], scores[-1]
    assert last["eval_margin"] > first["eval_margin"] + 0.05, (first, last)
    assert last["eval_accuracy"] >= first["eval_accuracy"] and last["eval_accuracy"] > 0.5, (first, last)
    assert last["eval_loss"] < first["eval_loss"]
    reference_needed = name in ("dpo", "ipo", "kto")
    assert len(loads) == 1 + reference_needed  # LoRA: the reference is the policy without its adapter


def test_lora_reference_is_the_base(base):
    """The adapter-switched-off policy gives the base's log-probabilities, also after the adapter trained."""
    from transformers import AutoModelForCausalLM

    from trainers.methods import lora

    policy = lora.attach(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), lora.Config(r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter
    ids = torch.tensor([[4, 5, 6, 7]])
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        assert not torch.allclose(policy(input_ids=ids).logits, expected, atol=1e-3)
        assert torch.allclose(reference.WithoutAdapter(policy)(input_ids=ids).logits, expected, atol=1e-6)
    assert policy.training  # the reference call left the policy's mode as it was


def write_rows(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pair_missing_rejected_is_located(workdir, tmp_path):
    rows = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                                  {"prompt": "a", "chosen": "b"}])
    spec = preference_spec("dpo", data={"train": rows})
    with pytest.raises(InputError, match=rf"{rows}: line 2: missing field 'rejected'"):
        train(parse_run(spec, "run.yaml"), quiet=True)


def test_kto_label_must_be_a_boolean(workdir, tmp_path):
    rows = write_rows(tmp_path / "kto.jsonl", [{"prompt": "a", "completion": "b", "label": "yes"}])
    with pytest.raises(InputError, match=rf"{rows}: line 1: field 'label' must be true or false, not 'yes'"):
        train(parse_run(preference_spec("kto", data={"train": rows}), "run.yaml"), quiet=True)


def test_pairs_given_to_kto_are_named(workdir):
    with pytest.raises(InputError,
                       match="line 1: this objective trains on prompt/completion/label rows, not 'preference'"):
        train(parse_run(preference_spec("kto", data={"train": "runs/data/prefs.jsonl"}), "run.yaml"), quiet=True)


@pytest.mark.parametrize("kind, message", [
    ("qwen2", r"the reference '.*' is a qwen2 model and the policy a llama model"),
    ("vocab", r"the reference '.*' has a vocabulary of 96 tokens and the policy 128"),
])
def test_reference_of_another_model_is_refused(kind, message, workdir, build, tmp_path):
    other = build(str(tmp_path / kind), "qwen2" if kind == "qwen2" else "llama",
                  **({"vocab_size": 96} if kind == "vocab" else {}))
    spec = preference_spec("dpo")
    spec["objective"]["reference"] = other
    with pytest.raises(SpecError, match=rf"run.yaml: objective.reference: {message}"):
        train(parse_run(spec, "run.yaml"), quiet=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workdir):
    """The loss turns NaN at step 5 (the 5th micro-batch): training stops before that update, names the
    step and checkpoint-4, writes no final folder, and checkpoint-4's weights are finite."""
    run = parse_run(preference_spec("dpo", eval_every=None, save_every=2), "run.yaml")
    calls = []

    def loss(model, batch, config):
        value, metrics = dpo.loss(model, batch, config)
        calls.append(1)
        return (value * float("nan") if len(calls) == 5 else value), metrics

    objective = dataclasses.replace(dpo.OBJECTIVE, loss=loss)
    with pytest.raises(NumericsError, match=r"step 5: the loss is nan .* the last good checkpoint is "
                                            r"out/dpo/checkpoint-4 \(continue with --resume out/dpo/checkpoint-4"):
        train(dataclasses.replace(run, objective=objective), quiet=True)
    assert sorted(os.listdir("out/dpo")) == ["checkpoint-2", "checkpoint-4", "log.jsonl"]
    from safetensors.torch import load_file

    weights = load_file("out/dpo/checkpoint-4/model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    with open("out/dpo/log.jsonl") as f:
        last = json.loads(f.readlines()[-1])
    assert last["event"] == "stopped" and last["step"] == 5 and last["last_good"] == "out/dpo/checkpoint-4"
