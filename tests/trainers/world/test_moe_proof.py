"""The small world's mixture-of-experts proof (slow: trains two MLP-only experts, ~5 minutes on 2 cores
once the base exists; the base is trained first when missing, see tests/trainers/small_world.py).

A two-expert MoE of MLP-only `add` and `reverse` experts (LoRA on the MLP projections, folded) routes
each task's tokens to its expert and scores near the add expert on add, above the base."""

from __future__ import annotations

import os

import pytest

from tests.trainers.small_world import trained_base
from trainers.world.moe_proof import run_moe_proof

pytestmark = pytest.mark.slow

MLP_LORA = {"name": "lora", "r": 64, "alpha": 64, "target_modules": ["gate_proj", "up_proj", "down_proj"]}


def mlp_expert(zoo: str, task: str, out: str) -> str:
    """runs/world/moe-TASK-mlp.yaml's recipe, folded into a model folder."""
    from surgery.adapters.fold_plan import plan_fold
    from surgery.merge.engine import Options, run_merge
    from trainers.loop import train
    from trainers.spec import parse_run
    from trainers.world.zoo import run_spec

    data = os.path.join(zoo, "data", task)
    spec = run_spec(os.path.join(zoo, "base"), [(os.path.join(data, "train.jsonl"), 1.0)],
                    [os.path.join(data, "test.jsonl")], os.path.join(out, "runs", task), 500, lr=2e-3, method=MLP_LORA)
    adapter = train(parse_run(spec, f"{task} mlp expert"), quiet=True)
    return run_merge(plan_fold(os.path.join(zoo, "base"), [adapter]), os.path.join(out, f"{task}-mlp"),
                     Options(card=False))


def test_moe_of_mlp_experts_routes_and_scores_near_the_expert(tmp_path):
    from trainers.world.zoo import write_data

    zoo = os.path.dirname(trained_base())
    write_data(os.path.join(zoo, "data"))  # the fixed splits (the same files when they exist)
    experts = {t: mlp_expert(zoo, t, str(tmp_path)) for t in ("add", "reverse")}
    result = run_moe_proof(zoo, str(tmp_path / "proof"), gate_modes=("cheap_embed",), per_token=(2,),
                           experts=experts, echo=print)
    routing, scores = result["routing"]["moe-cheap_embed-k2"], result["scores"]
    assert routing["add"]["mean"] > 0.9 and routing["reverse"]["mean"] > 0.9
    assert scores["moe-cheap_embed-k2"]["add"] > scores["base"]["add"]
    assert scores["moe-cheap_embed-k2"]["add"] >= scores["expert add"]["add"] - 0.1
