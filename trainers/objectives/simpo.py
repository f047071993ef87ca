"""SimPO: simple preference optimisation without a reference model (Meng et al. 2024,
https://arxiv.org/abs/2405.14734, Eq. 6).

The reward of a completion is its length-normalised log-probability, r = (beta / |y|) log pi(y|x),
and the pair's loss asks the chosen reward to exceed the rejected one by the target margin gamma:

    loss = -log sigmoid(r_w - r_l - gamma)

TRL realises it as CPO's `loss_type="simpo"` (with `cpo_alpha=0`, no SFT term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.objectives import objective, pairs
from trainers.objectives.pairs import build_batch, collate, encode  # noqa: F401  (called as simpo.build_batch)

SHAPES = pairs.SHAPES


class Config(objective.Config):
    beta: float = Field(2.0, gt=0, description="scale of the length-normalised reward (the paper uses 2 to 2.5)")
    gamma: float = Field(1.0, ge=0, description="target reward margin of chosen over rejected")


def simpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
               beta: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss (B,) and the rewards (B,), from summed log-probs and completion lengths (B,)."""
    reward_w = beta * chosen / chosen_tokens.clamp(min=1)
    reward_l = beta * rejected / rejected_tokens.clamp(min=1)
    return -F.logsigmoid(reward_w - reward_l - gamma), reward_w, reward_l


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    _, logps, tokens = pairs.forward_logps(model, batch)
    losses, reward_w, reward_l = simpo_loss(*pairs.halves(logps), *pairs.halves(tokens), config.beta, config.gamma)
    return losses.mean(), pairs.reward_metrics(reward_w, reward_l)


OBJECTIVE = objective.Objective("simpo", "SimPO", Config, SHAPES, "offline",
                                objective.Batches(encode, collate, packs=True), loss)
