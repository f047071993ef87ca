"""RFT: the selection by hand; a run on the tiny base (the kept rows are the best of each prompt and
reach the threshold, the acceptance rate is logged, each round is an SFT run, rounds chain); the
errors; and, slow, RFT raising exact match on the small world's `add`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from surgery.errors import InputError, SpecError
from trainers.loops import train
from trainers.objectives import rft
from trainers.spec import load_run, parse_run


def test_select_by_hand():
    """Two prompts, n = 3. Rewards [0.2, 0.9, 0.9 | 0.1, 0.3, 0.0].
    best, threshold 0.5: prompt 0 -> sample 1 (ties to the earlier), prompt 1 -> none (0.3 < 0.5);
    best, no threshold: [1], [4]; all, threshold 0.2: prompt 0 keeps 0 and 1 (sample 2 repeats 1's
    text), prompt 1 keeps 4."""
    r = torch.tensor([0.2, 0.9, 0.9, 0.1, 0.3, 0.0])
    texts = ["a", "b", "b", "c", "d", "e"]
    assert rft.select(r, texts, 3, "best", 0.5) == [[1], []]
    assert rft.select(r, texts, 3, "best", None) == [[1], [4]]
    assert rft.select(r, texts, 3, "all", 0.2) == [[0, 1], [4]]


def share_of_early_words(prompt: str, completion: str, row: dict) -> float:
    from surgery.demo.tiny import WORDS

    words = completion.split()
    return sum(w in WORDS[:40] for w in words) / max(len(words), 1)


def rft_spec(**changes) -> dict:
    spec = {"base": "models/base",
            "objective": {"name": "rft", "reward_functions": ["tests.trainers.test_rft:share_of_early_words"],
                          "samples": 4, "threshold": 0.5, "max_new_tokens": 5},
            "data": {"train": "runs/data/instruct.jsonl", "eval": "runs/data/eval.jsonl"},
            "chat_template": "chatml", "optim": {"lr": 3e-3}, "schedule": {"total_steps": 3},
            "batch": {"size": 4, "max_length": 64}, "out": "out/rft"}
    spec.update(changes)
    return spec


def records(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_rft_rounds_on_the_tiny_base(workdir):
    spec = rft_spec()
    spec["objective"] = {**spec["objective"], "rounds": 2}
    final = train(parse_run(spec, "rft.yaml"), quiet=True)
    assert os.path.realpath(final) == os.path.realpath("out/rft/round-2/final")
    log = records("out/rft")
    assert [r["round"] for r in log] == [0, 1, 2] and "eval_exact_match" in log[0]
    first = log[1]
    assert 0 < first["acceptance"] <= 1 and first["kept"] == round(first["acceptance"] * first["prompts"])
    kept = [json.loads(line) for line in open("out/rft/round-1-data.jsonl")]
    assert len(kept) == first["kept"] and all(share_of_early_words("", r["completion"], {}) >= 0.5 for r in kept)
    assert len({r["prompt"] for r in kept}) == len(kept)  # keep: best -> one per prompt
    inner = json.load(open("out/rft/round-2/final/lineage.json"))
    assert inner["objective"]["name"] == "sft" and inner["base"].endswith("round-1/final")
    # running it again keeps the finished rounds
    again = train(parse_run(spec, "rft.yaml"), quiet=True)
    assert os.path.realpath(again) == os.path.realpath(final)
    assert [r.get("skipped") for r in records("out/rft")[1:]] == ["finished by an earlier run"] * 2
    # --force runs every round again, in a hidden sibling that replaces out/rft once they finish
    forced = train(parse_run(spec, "rft.yaml"), quiet=True, force=True)
    assert os.path.realpath(forced) == os.path.realpath("out/rft/round-2/final")
    assert [r.get("skipped") for r in records("out/rft")] == [None] * 3 and os.listdir("out") == ["rft"]


def test_rft_errors(workdir):
    spec = rft_spec()
    spec["objective"] = {**spec["objective"], "threshold": 2.0}
    with pytest.raises(InputError, match=r"round 1: no completion of .* reached the threshold 2.0"):
        train(parse_run(spec, "rft.yaml"), quiet=True)
    spec = rft_spec(method={"name": "lora", "r": 4})
    spec["objective"] = {**spec["objective"], "rounds": 2}
    with pytest.raises(SpecError, match=r"rft.yaml: objective.rounds: later rounds"):
        train(parse_run(spec, "rft.yaml"), quiet=True)
    spec = rft_spec()
    spec["objective"] = {**spec["objective"], "keep": "most"}
    with pytest.raises(SpecError, match=r"rft.yaml: objective.keep"):
        parse_run(spec, "rft.yaml")


def test_example_spec_runs(workdir):
    run = load_run("runs/rft-add.yaml", ("base=models/base", "objective.threshold=null", "objective.rows_per_round=4",
                                         "objective.samples=2", "schedule.total_steps=2"))
    assert run.objective is rft.OBJECTIVE and run.objective_config.reward_functions == ["world.add"]
    final = train(run, quiet=True)
    # no threshold: every prompt keeps one
    assert os.path.isdir(final) and records(run.spec.out)[-1]["acceptance"] == 1.0


@pytest.mark.slow
def test_rft_raises_add_exact_match(workdir):
    """runs/rft-add.yaml from the small world's base with its weights damaged (half its sums wrong):
    greedy exact match on the 48 held-out add prompts after the last round beats the starting
    model's (round 0 of the log)."""
    from tests.trainers.small_world import damaged, trained_base

    run = load_run("runs/rft-add.yaml", (f"base={damaged(trained_base(), str(workdir / 'start'))}",))
    train(run, quiet=True)
    log = records(run.spec.out)
    print("rft:", [{k: r[k] for k in ("round", "acceptance", "eval_exact_match") if k in r} for r in log])
    assert log[-1]["eval_exact_match"] > log[0]["eval_exact_match"]


def test_an_unimportable_reward_is_refused_before_any_model_loads(workdir):
    spec = rft_spec()
    spec["objective"] = {**spec["objective"], "reward_functions": ["no_such_module:score"]}
    with pytest.raises(InputError, match=r"rft.yaml: objective.reward_functions: reward function "
                                         r"'no_such_module:score': cannot import it"):
        train(parse_run(spec, "rft.yaml"), quiet=True)
    assert not os.path.exists("out/rft")
