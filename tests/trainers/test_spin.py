"""SPIN: the pairs (data chosen, model rejected, matches dropped); its loss, DPO's logistic loss on
those pairs, worked by hand; rounds on the tiny base, each a DPO run whose base and reference is the
previous round's model; and, slow, SPIN raising exact match on the small world's `add`."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from surgery.errors import InputError
from trainers.loops import train
from trainers.objectives import dpo, spin
from trainers.spec import load_run, parse_run


def test_pairs():
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]
    assert spin.pairs(rows, ["3", "4"]) == [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]


def test_spin_loss_by_hand():
    """beta 0.1; data answer y: log pi = -2, log pi_t = -3; own answer y': log pi = -5, log pi_t = -4.
    t = 0.1 ((-2 + 3) - (-5 + 4)) = 0.2, loss = log(1 + e^-0.2) = 0.59814. When the policy is still
    pi_t (the round's start), t = 0 and loss = ln 2."""
    losses, _, _ = dpo.dpo_loss(torch.tensor([-2.0, -3.0]), torch.tensor([-5.0, -4.0]), torch.tensor([-3.0, -3.0]),
                                torch.tensor([-4.0, -4.0]), beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.2)), math.log(2)], abs=1e-6)


def spin_spec(**changes) -> dict:
    spec = {"base": "models/base", "objective": {"name": "spin", "rounds": 2, "beta": 0.1, "max_new_tokens": 5},
            "data": {"train": "runs/data/instruct.jsonl", "eval": "runs/data/eval.jsonl"},
            "chat_template": "chatml", "optim": {"lr": 3e-3}, "schedule": {"total_steps": 3},
            "batch": {"size": 4, "max_length": 64}, "out": "out/spin"}
    spec.update(changes)
    return spec


def test_spin_rounds_on_the_tiny_base(workdir):
    final = train(parse_run(spin_spec(), "spin.yaml"), quiet=True)
    assert os.path.realpath(final) == os.path.realpath("out/spin/round-2/final")
    with open("out/spin/log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert [r["round"] for r in log] == [0, 1, 2] and all("eval_exact_match" in r for r in log)
    pairs = [json.loads(line) for line in open("out/spin/round-1-data.jsonl")]
    data = {json.loads(line)["prompt"]: json.loads(line)["completion"] for line in open("runs/data/instruct.jsonl")}
    assert len(pairs) == log[1]["pairs"] > 0
    assert all(p["chosen"] == data[p["prompt"]] != p["rejected"] for p in pairs)
    second = json.load(open("out/spin/round-2/final/lineage.json"))
    assert second["objective"]["name"] == "dpo" and second["objective"]["beta"] == 0.1
    assert second["base"].endswith("round-1/final")  # so the reference of round 2 is round 1's model
    with open("out/spin/round-2/log.jsonl") as f:
        dpo_log = [json.loads(line) for line in f if '"loss"' in line]
    assert dpo_log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at a round's first step


def test_resume_is_refused(workdir):
    with pytest.raises(InputError, match="continues by running it again"):
        train(parse_run(spin_spec(), "spin.yaml"), resume="out/spin/round-1/checkpoint-1", quiet=True)


def test_example_spec_runs(workdir):
    run = load_run("runs/spin.yaml", ("base=models/base", "objective.rounds=1", "objective.rows_per_round=4",
                                      "schedule.total_steps=2", "batch.size=2"))
    assert run.objective is spin.OBJECTIVE and run.objective_config.beta == 0.5
    assert os.path.isdir(train(run, quiet=True))


@pytest.mark.slow
def test_spin_raises_add_exact_match(workdir):
    """runs/spin.yaml from the small world's base with its weights damaged (half its sums wrong):
    greedy exact match on the 48 held-out add prompts after the last round beats the starting
    model's (round 0 of the log)."""
    from tests.trainers.small_world import damaged, trained_base

    run = load_run("runs/spin.yaml", (f"base={damaged(trained_base(), str(workdir / 'start'))}",))
    train(run, quiet=True)
    with open(os.path.join(run.spec.out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    print("spin:", [{k: r[k] for k in ("round", "pairs", "eval_exact_match") if k in r} for r in log])
    assert log[-1]["eval_exact_match"] > log[0]["eval_exact_match"]
