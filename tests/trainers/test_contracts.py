"""The plug-in contracts: every registered objective and method is a typed Objective / TrainingMethod
that its loop can run, a contract broken is refused when it is built, the loops' registry covers every
loop an objective may name, the shared log-probabilities by hand, the small world's rewards found
through their entry point, and PPO's former `reward_function` field still read."""

from __future__ import annotations

import ast
import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from surgery.errors import SpecError
from tests.trainers.conftest import spec_dict
from trainers import loops, methods, objectives, rewards
from trainers.checkpoint import RunIdentity
from trainers.logprobs import IGNORE, next_token_logps, sequence_logps, token_logps
from trainers.methods.method import TrainingMethod
from trainers.objectives import objective, sft
from trainers.spec import parse_run

ROOT = Path(__file__).resolve().parents[2]


def test_registries_hold_typed_entries_under_their_names():
    assert all(isinstance(o, objective.Objective) and o.name == k for k, o in objectives.REGISTRY.items())
    assert all(isinstance(m, TrainingMethod) and m.name == k for k, m in methods.REGISTRY.items())
    assert {m.name for m in methods.REGISTRY.values() if m.whole_model} == {"full", "freeze"}


def test_every_loop_an_objective_may_name_has_a_loop():
    assert set(objective.LOOPS) == set(loops.REGISTRY)
    assert {o.loop for o in objectives.REGISTRY.values()} == set(loops.REGISTRY)  # and every loop is used


@pytest.mark.parametrize("change, message", [
    ({"loop": "nowhere"}, "unknown loop 'nowhere'"),
    ({"loss": None}, "the offline loop calls loss"),
    ({"batches": None}, "the offline loop calls batches"),
    ({"annotate": lambda reference, batch, config: batch}, "gives `annotate`"),
    ({"uses_reference": objective.always}, "gives `annotate`"),
    ({"shapes": ("tabular",)}, r"shapes \['tabular'\]"),
    ({"config": BaseModel}, "must subclass"),
])
def test_a_broken_objective_is_refused_when_built(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(sft.OBJECTIVE, **change)


def test_a_broken_method_is_refused_when_built():
    full = methods.REGISTRY["full"]
    with pytest.raises(ValueError, match="must forbid unknown fields"):
        dataclasses.replace(full, config=BaseModel)
    with pytest.raises(ValueError, match="saves is 'model' or 'adapter'"):
        dataclasses.replace(full, saves="folder")


def test_log_probabilities_by_hand():
    """Vocabulary of 2, logits (0, ln 3) -> p = (1/4, 3/4); at temperature 2 the logits halve: p ∝ (1, √3).
    A sequence [a, b, a] with labels [IGNORE, b, a]: log p(b) + log p(a) after the first two positions."""
    logits = torch.tensor([[[0.0, math.log(3)]] * 3])  # (1, 3, 2)
    ids = torch.tensor([[0, 1, 0]])
    assert torch.allclose(next_token_logps(logits, ids), torch.tensor([[math.log(3 / 4), math.log(1 / 4)]]))
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert torch.allclose(token_logps(logits[:, 0], torch.tensor([1]), temperature=2.0), torch.tensor([math.log(p1)]))
    total, count = sequence_logps(logits, torch.tensor([[IGNORE, 1, 0]]))
    assert torch.allclose(total, torch.tensor([math.log(3 / 4) + math.log(1 / 4)])) and count.tolist() == [2]
    total, count = sequence_logps(logits, torch.tensor([[IGNORE, IGNORE, 0]]))  # only the last token is a target
    assert torch.allclose(total, torch.tensor([math.log(1 / 4)])) and count.tolist() == [1]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_world_rewards_register_through_the_entry_point():
    from trainers.world.rewards import REWARDS

    assert not any(n.startswith("trainers.world") for n in imports_of(ROOT / "trainers" / "rewards.py"))
    assert {f"world.{task}" for task in REWARDS} <= set(rewards.registered())
    assert rewards.function("world.add") is REWARDS["add"]


def ppo_spec(**objective_fields) -> dict:
    return spec_dict(objective={"name": "ppo", **objective_fields}, batch={"size": 8})


def test_ppo_former_reward_function_field_warns_and_is_the_same_run():
    with pytest.warns(FutureWarning, match=r"ppo.yaml: objective.reward_function: deprecated; write reward_functions"):
        old = parse_run(ppo_spec(reward_function="world.add"), "ppo.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling does not warn
        new = parse_run(ppo_spec(reward_functions=["world.add"]), "ppo.yaml")
    assert old.objective_config.reward_functions == ["world.add"]
    assert RunIdentity.of(old) == RunIdentity.of(new)  # one may resume the other's checkpoint
    with pytest.raises(SpecError, match="objective.reward_function: reward_function is the former spelling"):
        parse_run(ppo_spec(reward_function="world.add", reward_functions=["world.add"]), "ppo.yaml")


def test_ppo_takes_weighted_rewards_like_grpo():
    run = parse_run(ppo_spec(reward_functions=["world.add", "world.reverse"], reward_model="models/rm",
                             reward_weights=[1.0, 0.5, 0.1]), "ppo.yaml")
    assert run.objective_config.reward_weights == [1.0, 0.5, 0.1]
    with pytest.raises(SpecError, match="2 reward_weights for 3 rewards"):
        parse_run(ppo_spec(reward_functions=["world.add", "world.reverse"], reward_model="models/rm",
                           reward_weights=[1.0, 0.5]), "ppo.yaml")
