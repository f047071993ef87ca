"""Training objectives: what a batch holds and what loss is computed on it, one file each.

REGISTRY maps the `objective.name` of a run spec to its `Objective` (trainers/objectives/objective.py
says what an objective gives, and how to add one). Helpers shared by several objectives live beside
them without a registry entry (pairs.py: the pairwise preference layout).
"""

from __future__ import annotations

from trainers.objectives import dpo, grpo, ipo, kto, orpo, ppo, pretrain, reward, rft, sft, simpo, spin
from trainers.objectives.objective import Objective

REGISTRY: dict[str, Objective] = {o.OBJECTIVE.name: o.OBJECTIVE for o in (
    sft, pretrain, ppo, grpo, rft, spin, dpo, ipo, simpo, orpo, kto, reward)}
