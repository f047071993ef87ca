"""IPO: identity preference optimisation (Azar et al. 2023, https://arxiv.org/abs/2310.12036, Eq. 17),
a squared loss that pulls the log-ratio gap to a fixed target instead of pushing it without bound.

With the log-ratios averaged over each completion's tokens (as TRL does, and as the paper's results
were computed), h = (log pi(y_w) - log pi_ref(y_w)) / |y_w| - (log pi(y_l) - log pi_ref(y_l)) / |y_l|:

    loss = (h - 1 / (2 beta))^2

beta (tau in the paper) sets the target 1/(2 beta): smaller beta, larger gap. The reference is found
as for DPO (the base, the base with the adapter switched off, or `reference`).
"""

from __future__ import annotations

import torch
from pydantic import Field

from trainers.objectives import objective, pairs
from trainers.objectives.pairs import annotate, build_batch, collate, encode  # noqa: F401  (called as ipo.build_batch)

SHAPES = pairs.SHAPES


class Config(objective.ReferenceConfig):
    beta: float = Field(0.1, gt=0,
                        description="regularisation tau: the per-token log-ratio gap is pulled to 1/(2 beta)")


def ipo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss (B,) and the rewards beta * (summed log-ratio) of chosen and rejected (B,)."""
    h = (chosen - ref_chosen) / chosen_tokens.clamp(min=1) - (rejected - ref_rejected) / rejected_tokens.clamp(min=1)
    return (h - 1 / (2 * beta)) ** 2, beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    _, logps, tokens = pairs.forward_logps(model, batch)
    losses, reward_w, reward_l = ipo_loss(*pairs.halves(logps), *pairs.halves(batch["ref_logps"]),
                                          *pairs.halves(tokens), config.beta)
    return losses.mean(), pairs.reward_metrics(reward_w, reward_l)


OBJECTIVE = objective.Objective("ipo", "IPO", Config, SHAPES, "offline", objective.Batches(encode, collate, packs=True),
                                loss, annotate=annotate, uses_reference=objective.always)
