"""DPO: direct preference optimisation against a frozen reference policy (Rafailov et al. 2023,
https://arxiv.org/abs/2305.18290), with conservative DPO's label smoothing (Mitchell 2023,
https://ericmitchell.ai/cdpo.pdf).

For a pair with summed completion log-probabilities log pi(y_w|x), log pi(y_l|x) under the policy and
the reference, the implied rewards are r_w = beta (log pi(y_w) - log pi_ref(y_w)) and likewise r_l,
and with d = r_w - r_l:

    loss = -(1 - eps) log sigmoid(d) - eps log sigmoid(-d)

eps = label_smoothing is the assumed share of flipped labels (0: plain DPO). The reference is the
base model, loaded once and frozen; when the method is an adapter (LoRA, ...), it is the policy with
its adapter switched off, so no second copy is held. `reference` names another model folder (an SFT
model, say) of the same architecture and vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.objectives import objective, pairs
from trainers.objectives.pairs import annotate, build_batch, collate, encode  # noqa: F401  (called as dpo.build_batch)

SHAPES = pairs.SHAPES


class Config(objective.ReferenceConfig):
    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference (higher: closer)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: assumed share of flipped labels")


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss (B,) and the implied rewards of chosen and rejected (B,), from summed log-probs (B,)."""
    reward_w, reward_l = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    d = reward_w - reward_l
    losses = -(1 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)
    return losses, reward_w, reward_l


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    _, logps, _ = pairs.forward_logps(model, batch)
    losses, reward_w, reward_l = dpo_loss(*pairs.halves(logps), *pairs.halves(batch["ref_logps"]), config.beta,
                                          config.label_smoothing)
    return losses.mean(), pairs.reward_metrics(reward_w, reward_l)


OBJECTIVE = objective.Objective("dpo", "DPO", Config, SHAPES, "offline", objective.Batches(encode, collate, packs=True),
                                loss, annotate=annotate, uses_reference=objective.always)
