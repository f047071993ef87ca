"""The shared loop on a tiny Llama: the loss falls, only the method's parameters change, an
interrupted run resumed from its checkpoint ends with the same weights as an uninterrupted one,
and a crash while writing a checkpoint leaves the previous one intact."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from surgery.errors import InputError
from tests.trainers.conftest import spec_dict
from trainers import checkpoint, methods, templates
from trainers.loops import train
from trainers.methods.method import TrainingMethod
from trainers.optim import lr_factor
from trainers.spec import Schedule, parse_run
from trainers.templates import template_mismatch


def weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


def log_records(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def eval_losses(out: str) -> list[float]:
    return [r["eval_loss"] for r in log_records(out) if "eval_loss" in r]


def run(**changes) -> str:
    return train(parse_run(spec_dict(**changes), "run.yaml"), quiet=True)


def test_full_lowers_the_loss_and_changes_every_weight(workdir, base):
    final = run(eval_every=1, schedule={"warmup_steps": 1, "total_steps": 8})
    before, after = weights(base), weights(final)
    losses = eval_losses("out/run")
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_freeze_changes_only_the_layers_above(workdir, base):
    final = run(method={"name": "freeze", "layers": 1, "embeddings": True}, eval_every=1)
    before, after = weights(base), weights(final)
    frozen = {k for k in before if k.startswith("model.layers.0.") or k == "model.embed_tokens.weight"}
    assert len(frozen) == 10  # 9 tensors of layer 0 and the embeddings
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in set(before) - frozen)
    losses = eval_losses("out/run")
    assert losses[-1] < losses[0]


def test_lineage_and_template(workdir, base):
    final = run()
    with open(os.path.join(final, "lineage.json")) as f:
        lineage = json.load(f)
    with open("runs/data/instruct.jsonl", "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert lineage["base"] == os.path.abspath("models/base")
    assert lineage["data"][0]["sha256"] == {"runs/data/instruct.jsonl": digest}
    assert (lineage["method"], lineage["objective"]) == ({"name": "full"}, {"name": "sft", "loss_on": "completion"})
    assert lineage["steps"] == 6 and lineage["chat_template"] == "chatml" and lineage["parent"] is None
    assert lineage["hyper_parameters"]["optim"]["lr"] == 3e-3 and "eval_loss" in lineage["metrics"]
    # the base ships the same ChatML text; a Llama-3 formatted run does not
    assert template_mismatch(base, final) is None
    other = train(parse_run(spec_dict(chat_template="llama3", out="out/llama3"), "run.yaml"), quiet=True)
    assert "'chatml'" in template_mismatch(final, other) and "'llama3'" in template_mismatch(final, other)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(other).chat_template == templates.LLAMA3  # stored with the weights


def test_resume_gives_the_same_weights(workdir):
    """6 steps straight against 3 steps, a stop, and 3 more from checkpoint-3 (optimizer moments,
    schedule, data position and RNG restored): the same bytes."""
    straight = run(out="out/straight", save_every=2)
    spec = parse_run(spec_dict(out="out/stopped", save_every=2), "run.yaml")
    stopped_at = train(spec, stop_after=3, quiet=True)
    assert stopped_at.endswith("checkpoint-3") and not os.path.exists("out/stopped/final")
    resumed = train(spec, resume=stopped_at, quiet=True)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in log_records("out/stopped") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log continues where the checkpoint stopped, no step twice
    with open(os.path.join(resumed, "lineage.json")) as f:
        assert json.load(f)["parent"] == os.path.abspath(stopped_at)


def test_resume_from_another_run_is_refused(workdir):
    first = train(parse_run(spec_dict(out="out/a"), "run.yaml"), stop_after=2, quiet=True)
    other = parse_run(spec_dict(out="out/b", optim={"lr": 1e-3}), "run.yaml")
    with pytest.raises(InputError, match=r"different run \(optim.lr: 0.003 there, 0.001 here\)"):
        train(other, resume=first, quiet=True)
    with pytest.raises(InputError, match="not a checkpoint of a training run"):
        train(other, resume="models/base", quiet=True)
    # the same run, written differently (a default spelled out, another out folder), may resume it
    same = parse_run(spec_dict(out="out/c", objective={"name": "sft", "loss_on": "completion"}), "run.yaml")
    assert train(same, resume=first, quiet=True) == "out/c/final"


def test_crash_while_checkpointing_keeps_the_last_good_one(workdir, monkeypatch):
    real = checkpoint.write_state

    def failing(folder, step, *args, **kwargs):
        if step == 4:
            raise OSError("disk full")
        return real(folder, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_state", failing)
    with pytest.raises(OSError, match="disk full"):
        run(save_every=2)
    assert sorted(os.listdir("out/run")) == ["checkpoint-2", "log.jsonl"]  # no partial checkpoint-4
    monkeypatch.setattr(checkpoint, "write_state", real)
    final = train(parse_run(spec_dict(save_every=2), "run.yaml"), resume="out/run/checkpoint-2", quiet=True)
    a, b = weights(final), weights(run(out="out/straight", save_every=2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def head_only() -> TrainingMethod:
    """A stand-in for a PEFT method (not a whole model when saved): trains and saves lm_head only."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def attach(model, config):
        for name, p in model.named_parameters():
            p.requires_grad_(name == "lm_head.weight")
        return model

    def save(model, folder, config):
        save_file({"lm_head.weight": model.lm_head.weight.detach().contiguous()},
                  os.path.join(folder, "head.safetensors"))

    return TrainingMethod("head_only", Config, attach, save, saves="adapter")


def test_resume_restores_trainable_tensors_of_a_partial_method(workdir, monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "head_only", head_only())
    spec = parse_run(spec_dict(method={"name": "head_only"}, out="out/stopped"), "run.yaml")
    stopped = train(spec, stop_after=3, quiet=True)
    assert os.path.isfile(os.path.join(stopped, "trainer_state", "trainable.safetensors"))
    resumed = load_file(os.path.join(train(spec, resume=stopped, quiet=True), "head.safetensors"))
    straight = parse_run(spec_dict(method={"name": "head_only"}, out="out/straight"), "run.yaml")
    expected = load_file(os.path.join(train(straight, quiet=True), "head.safetensors"))
    assert torch.equal(resumed["lm_head.weight"], expected["lm_head.weight"])


def test_schedule_by_hand():
    """warm-up 2, total 6, cosine to 0: factors (s+1)/3 for s < 2, then (1 + cos(pi (s-2)/4)) / 2."""
    s = Schedule(warmup_steps=2, total_steps=6)
    assert [round(lr_factor(i, s), 6) for i in range(7)] == [
        round(1 / 3, 6), round(2 / 3, 6), 1.0, round((1 + 2 ** -0.5) / 2, 6), 0.5, round((1 - 2 ** -0.5) / 2, 6), 0.0]
    assert lr_factor(5, Schedule(total_steps=6, cosine=False)) == 1.0


@pytest.mark.integration
def test_killed_run_resumes_to_the_same_weights(workdir):
    """A `python -m trainers` process killed (SIGKILL, no clean-up) between checkpoints; resumed from
    its last complete checkpoint it ends where an uninterrupted run ends."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    spec = spec_dict(out="out/killed", schedule={"warmup_steps": 1, "total_steps": 150}, save_every=10,
                     batch={"size": 2, "max_length": 64}, eval_every=None)
    with open("kill.yaml", "w") as f:
        yaml.safe_dump(spec, f)
    proc = subprocess.Popen([sys.executable, "-m", "trainers", "kill.yaml", "--quiet"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not os.path.isdir("out/killed/checkpoint-20") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    done = [n for n in os.listdir("out/killed") if n.startswith("checkpoint-")]
    last = max(done, key=lambda n: int(n.split("-")[1]))
    assert not os.path.exists("out/killed/final") and int(last.split("-")[1]) < 150
    run = parse_run(spec, "kill.yaml")
    resumed = train(run, resume=os.path.join("out/killed", last), quiet=True)
    straight = train(parse_run({**spec, "out": "out/straight"}, "kill.yaml"), quiet=True)
    a, b = weights(resumed), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_sigterm_stops_cleanly(workdir):
    """SIGTERM (what schedulers send) unwinds like Ctrl-C: exit 130, complete checkpoints only, no
    partial folder, and the message says how to continue."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    spec = spec_dict(out="out/term", schedule={"total_steps": 200}, save_every=5, batch={"size": 2, "max_length": 64},
                     eval_every=None)
    with open("term.yaml", "w") as f:
        yaml.safe_dump(spec, f)
    proc = subprocess.Popen([sys.executable, "-m", "trainers", "term.yaml", "--quiet"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.isdir("out/term/checkpoint-10") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: the checkpoints already in out/term are complete" in err
    names = os.listdir("out/term")
    assert "final" not in names and not [n for n in names if n.startswith(".")]
    assert all(os.path.isfile(f"out/term/{n}/trainer_state/state.json") for n in names if n.startswith("checkpoint-"))


def with_reference() -> types.SimpleNamespace:
    """SFT plus `annotate`: the loop must hand it a frozen copy of the base before every loss."""
    from trainers.objectives import objective, sft

    seen: list[tuple[float, float]] = []  # (reference loss, model loss) of each micro-batch

    def annotate(reference, batch, config):
        assert not reference.training and not any(p.requires_grad for p in reference.parameters())
        loss, _ = sft.loss(reference, batch, config)
        return {**batch, "reference_loss": loss}

    def loss(model, batch, config):
        value, metrics = sft.loss(model, batch, config)
        seen.append((float(batch["reference_loss"]), float(value)))
        return value, metrics

    made = dataclasses.replace(sft.OBJECTIVE, name="with_reference", annotate=annotate, loss=loss,
                               uses_reference=objective.always)
    return types.SimpleNamespace(OBJECTIVE=made, seen=seen)


def test_objective_with_a_reference_model(workdir, monkeypatch):
    """Before the first update the model is the base, so both losses agree; by the last step the
    model has moved and the reference has not, so the model's loss is lower."""
    from trainers import objectives

    objective = with_reference()
    monkeypatch.setitem(objectives.REGISTRY, "with_reference", objective.OBJECTIVE)
    train(parse_run(spec_dict(objective={"name": "with_reference"}), "run.yaml"), quiet=True)
    assert len(objective.seen) == 6 * 2 + 4  # 6 steps of 2 micro-batches, then 8 eval rows in 4 (annotated too)
    for reference, model in objective.seen[:2]:
        assert reference == pytest.approx(model, abs=1e-6)
    for reference, model in objective.seen[10:]:
        assert model < reference - 0.1
