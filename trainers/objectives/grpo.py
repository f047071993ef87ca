"""GRPO, group relative policy optimization (Shao et al. 2024, DeepSeekMath,
https://arxiv.org/abs/2402.03300): its spec fields and the pure tensor math of one update. The loop
that samples the groups, scores them and steps is trainers/loops/grpo_rollouts.py.

For each prompt, G completions are sampled; their rewards r_1..r_G become advantages relative to
the group, A_i = (r_i - mean(r)) / (std(r) + 1e-4), std with Bessel's correction (n - 1), as TRL
computes them; `scale_rewards: batch` divides by the std of the whole step's rewards instead, `none`
does not divide (Dr. GRPO, https://arxiv.org/abs/2503.20783). Every token t of completion i gets A_i.

Per token, with rho = exp(log pi - log pi_old):
  loss_t = -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta kl_t,
  kl_t = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1   (the k3 estimator of KL(pi || pi_ref),
  http://joschu.net/blog/kl-approx.html), multiplied by rho when `kl_ratio_correction` (TRL 1.16's
  default, DeepSeek-V3.2: the unbiased reverse-KL gradient; it changes the gradient even where rho = 1).
Aggregation (`loss_type`, TRL 1.16's default is `dapo`):
- dapo: Σ loss_t over the step's completion tokens / their count (all micro-batches and processes);
- grpo: each completion's mean over its tokens, then the mean over completions;
- bnpo: Σ loss_t / tokens within each micro-batch, then the mean over micro-batches;
- dr_grpo: Σ loss_t / (completions x max_new_tokens).
Each maps to a per-micro-batch mean and an item count (`num_items`) that the loop weights by, so
accumulation gives the aggregate above.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field

from trainers.logprobs import model_logps
from trainers.objectives import objective

SHAPES = ("prompt_completion",)  # the prompt is sampled from; the completion is there for rewards that check it
STD_EPS = 1e-4  # added to the std before dividing, as TRL


class Config(objective.RewardConfig):
    group_size: int = Field(8, ge=2, description="completions sampled per prompt (G); batch.size counts prompts")
    max_new_tokens: int = Field(32, ge=1, description="longest completion sampled")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (log-probs are taken at it too, as TRL)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts")
    epsilon: float = Field(0.2, gt=0, lt=1, description="the ratio is clipped below at 1 - epsilon")
    epsilon_high: float | None = Field(None, gt=0, description="the ratio is clipped above at 1 + epsilon_high "
                                       "(default: epsilon; DAPO uses 0.28)")
    beta: float = Field(0.0, ge=0, description="weight of the k3 KL to the base (0: no reference model, TRL's default)")
    kl_ratio_correction: bool = Field(True, description="multiply the KL term by the ratio rho (TRL's "
                                      "use_bias_correction_kl, on by default)")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="divide advantages by the std of "
                                                             "the group, of the step, or not at all")
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = Field("dapo", description="how token losses are "
                                                                  "averaged (TRL 1.16's default: dapo)")
    iterations: int = Field(1, ge=1, description="optimizer steps on each batch of rollouts (mu); above 1 the "
                            "clipping bounds the drift from the policy that sampled them")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """(P*G,) rewards, groups consecutive -> (P*G,) advantages."""
    grouped = rewards.float().view(-1, group_size)  # (P, G)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)  # (P*G,)
    if scale == "none":
        return centred
    std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1) if scale == "group" else rewards.float().std()
    return centred / (std + STD_EPS)


def token_losses(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                 advantages: torch.Tensor, epsilon: float, epsilon_high: float, beta: float,
                 kl_ratio: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (B, T) and per-token terms (ratio, kl) for metrics; advantages are (B,)."""
    ratio = torch.exp(logps - old_logps)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)  # (B, T)
    terms = {"ratio": ratio.detach(),
             "clipped": (((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))).float()}
    if beta:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1  # (B, T), k3
        loss = loss + beta * (kl * ratio if kl_ratio else kl)
        terms["kl"] = kl.detach()
    return loss, terms


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_new_tokens: int) -> torch.Tensor:
    """The micro-batch's loss under `loss_type`; the loop weights it by `items(mask, loss_type)`."""
    mask = mask.float()
    total = (token_loss * mask).sum()
    if loss_type in ("dapo", "bnpo"):  # they differ in the weights only: tokens, or 1 per micro-batch
        return total / mask.sum().clamp(min=1.0)
    if loss_type == "grpo":
        return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()  # mean of per-completion means
    if loss_type == "dr_grpo":
        return total / (mask.shape[0] * max_new_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def items(mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """What a micro-batch's loss is weighted by so accumulation gives the aggregate: its completion
    tokens (dapo), its completions (grpo, dr_grpo), or 1 (bnpo: the mean of micro-batch means)."""
    if loss_type == "dapo":
        return mask.sum()
    if loss_type == "bnpo":
        return torch.tensor(1)
    return torch.tensor(mask.shape[0])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1))


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch of rollouts: input_ids, attention_mask and completion_mask (B, T) as
    trainers.generation.pack gives them, advantages (B,), old_logps and ref_logps (B, T-1) when used."""
    logps = model_logps(model, batch["input_ids"], batch["attention_mask"], config.temperature)  # (B, T-1)
    mask = batch["completion_mask"][:, 1:]  # the token at t+1 is scored from position t
    old = batch.get("old_logps")
    old = logps.detach() if old is None else old  # one step per rollout: pi_old is pi, ratio 1 (its gradient stays)
    high = config.epsilon_high if config.epsilon_high is not None else config.epsilon
    per_token, terms = token_losses(logps, old, batch.get("ref_logps"), batch["advantages"], config.epsilon, high,
                                    config.beta, config.kl_ratio_correction)
    value = aggregate(per_token, mask, config.loss_type, config.max_new_tokens)
    metrics = {"clip_ratio": masked_mean(terms["clipped"], mask)}
    if "kl" in terms:
        metrics["kl"] = masked_mean(terms["kl"], mask)
    return value, metrics


def uses_reference(config: BaseModel) -> bool:
    """The frozen reference is needed for the KL term only."""
    return config.beta > 0


OBJECTIVE = objective.Objective("grpo", "GRPO", Config, SHAPES, "grpo_rollouts", loss=loss,
                                uses_reference=uses_reference)
