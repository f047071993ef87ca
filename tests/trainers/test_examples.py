"""Every example run spec in runs/ trains on the tiny base: the loss falls, and transformers loads
the result with every weight. `surgery train` runs them, with --set and --resume, and prints errors
without a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from trainers.loops import train
from trainers.spec import load_run

ALL_EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "runs").glob("*.yaml"))


def own_loop(path: Path) -> bool:
    """An objective with a loop of its own (GRPO, RFT, SPIN, PPO): its example is run by its own tests."""
    import yaml

    from trainers.objectives import REGISTRY

    spec = yaml.safe_load(path.read_text())
    if "objective" not in spec:  # not a training run: the RLAIF labelling specs (test_judges.py)
        return True
    return REGISTRY[spec["objective"]["name"]].loop != "offline"


EXAMPLES = [p for p in ALL_EXAMPLES if not own_loop(p)]


def test_there_are_examples():
    assert {p.stem for p in EXAMPLES} >= {"sft-full", "sft-freeze", "sft-mixture", "pretrain", "dpo", "ipo", "simpo",
                                           "orpo", "kto", "reward"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.integration
def test_example_trains(example, workdir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run = load_run(f"runs/{example.name}")
    final = train(run, quiet=True)
    with open(os.path.join(run.spec.out, "log.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == run.spec.schedule.total_steps
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.3, losses
    # a reward model is a sequence classifier: its folder loads with that class, head included
    auto = AutoModelForSequenceClassification if run.spec.objective.name == "reward" else AutoModelForCausalLM
    model, info = auto.from_pretrained(final, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_surgery_train_command(workdir):
    runner = CliRunner()
    stop = runner.invoke(main, ["train", "runs/sft-freeze.yaml", "--quiet", "--set", "schedule.total_steps=4",
                                "--set", "save_every=2", "--set", "eval_every=null"])
    assert stop.exit_code == 0, stop.output
    assert stop.output.strip().endswith("wrote out/sft-freeze/final")
    again = runner.invoke(main, ["train", "runs/sft-freeze.yaml", "--quiet", "--set", "schedule.total_steps=4",
                                 "--set", "out=out/again", "--resume", "out/sft-freeze/checkpoint-2"])
    assert again.exit_code == 0, again.output
    refused = runner.invoke(main, ["train", "runs/sft-freeze.yaml", "--quiet", "--resume",
                                   "out/sft-freeze/checkpoint-2"])
    assert refused.exit_code == 2
    assert "written by a different run (schedule.total_steps: 4 there, 12 here)" in refused.output
    bad = runner.invoke(main, ["train", "runs/sft-freeze.yaml", "--set", "optim.lr=-1"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "error: runs/sft-freeze.yaml: optim.lr (line 9): Input should be greater than 0 (got -1)" in bad.output


def test_surgery_train_prints_the_held_out_scores(workdir):
    """The last evaluation on data.eval is printed with where every step's values are (OUT/log.jsonl); a run
    without data.eval prints only where it wrote."""
    done = CliRunner().invoke(main, ["train", "runs/sft-freeze.yaml", "--quiet", "--set", "schedule.total_steps=2"])
    assert done.exit_code == 0, done.output
    with open("out/sft-freeze/log.jsonl") as f:
        last = [r for r in map(json.loads, f) if "eval_loss" in r][-1]
    assert last["step"] == 2
    assert done.output.strip().splitlines() == [
        f"held-out (data.eval) at step 2: eval_loss {last['eval_loss']:.4g}, eval_accuracy "
        f"{last['eval_accuracy']:.4g}; every step's values are in out/sft-freeze/log.jsonl",
        "wrote out/sft-freeze/final"]
    plain = CliRunner().invoke(main, ["train", "runs/sft-freeze.yaml", "--quiet", "--set", "schedule.total_steps=2",
                                      "--set", "data.eval=[]", "--set", "out=out/plain"])
    assert plain.exit_code == 0 and plain.output.strip().splitlines() == ["wrote out/plain/final"], plain.output
