"""PPO for RLHF (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593; Ouyang et al. 2022): its
spec fields and the pure tensor math of one PPO update. The loop that samples rollouts, scores them
and runs the epochs is trainers/loops/ppo_rollouts.py.

Per completion token t of a rollout (right-padded, `mask` marks real tokens):
- KL penalty to the frozen reference, k1: kl_t = log pi(a_t) - log pi_ref(a_t) (k3 optional:
  (r - 1) - log r with r = pi_ref / pi, Schulman 2020, http://joschu.net/blog/kl-approx.html);
- reward r_t = -kl_coef * kl_t, plus the completion's score (trainers/rewards.py: reward functions and a
  reward model reading the policy's token ids, weighted) on the last real token;
- GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438): delta_t = r_t + gamma V_{t+1} - V_t,
  A_t = delta_t + gamma lambda A_{t+1}, with V and A zero past the end; returns R_t = A_t + V_t;
- advantages whitened over the batch's real tokens (mean 0, variance 1);
- clipped surrogate (Schulman et al. 2017, https://arxiv.org/abs/1707.06347):
  L_pg = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps)), rho_t = exp(log pi - log pi_old);
- clipped value loss: L_v = 0.5 mean_t max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2);
- loss = L_pg + vf_coef L_v. Means are over real tokens of the minibatch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainers.objectives import objective

SHAPES = ("prompt_completion",)  # the prompt is sampled from; `completion` is the answer a reward function may check


class Config(objective.RewardConfig, objective.ReferenceConfig):
    reward_function: str | None = Field(None, exclude=True, deprecated="write reward_functions: [NAME] (which may "
                                        "be combined with reward_model and reward_weights)",
                                        description="one Python reward (the former field; see reward_functions)")
    kl_coef: float = Field(0.05, ge=0, description="weight of the per-token KL penalty in the reward")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="k1: log pi - log pi_ref; k3: (r - 1) - log r")
    gamma: float = Field(1.0, ge=0, le=1, description="discount of GAE")
    lam: float = Field(0.95, ge=0, le=1, description="lambda of GAE")
    clip: float = Field(0.2, gt=0, lt=1, description="the policy ratio is clipped to [1 - clip, 1 + clip]")
    value_clip: float = Field(0.2, gt=0, description="a value moves at most this far from its rollout value")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    epochs: int = Field(4, ge=1, description="PPO epochs over each rollout batch")
    minibatches: int = Field(1, ge=1,
                             description="optimizer steps per epoch (the rollout batch split in as many parts)")
    max_new_tokens: int = Field(32, ge=1, description="longest completion sampled")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts")
    missing_eos_penalty: float | None = Field(None,
                                              description="subtracted from the score of a completion that never ended")

    @field_validator("reward_function")
    @classmethod
    def _one_reward(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A spec with the former field keeps its rule: exactly one reward, a model or a function."""
        if (info.data.get("reward_model") is None) == (v is None):
            raise ValueError("give exactly one of reward_model (a folder) and reward_function ('module:function'), "
                             "or list reward functions in reward_functions")
        if info.data.get("reward_functions"):
            raise ValueError("reward_function is the former spelling of reward_functions: give only reward_functions")
        return v

    @model_validator(mode="after")
    def _rewards(self):
        """The former field becomes reward_functions; as before, its name is checked when the run starts."""
        former = self.__dict__["reward_function"]  # not self.reward_function: that access warns (the spec warned once)
        if former is not None:
            self.reward_functions, self.__dict__["reward_function"] = [former], None
            self._functions_field = "reward_function"
        self.check_rewards(names=former is None)
        return self


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (n - 1) variance over the masked entries."""
    n = mask.sum()
    centred = (x - masked_mean(x, mask)) * mask
    return (centred ** 2).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; zero elsewhere."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps) * mask


def token_kl(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) at the sampled tokens, (B, T)."""
    log_ratio = logps - ref_logps  # log pi / pi_ref
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio  # (r - 1) - log r with r = pi_ref / pi


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last masked-in token, (B,) (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * (mask > 0)).argmax(1)


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef * kl on every real token, plus each row's score on its last real token, (B, T)."""
    rewards = -kl_coef * kl * mask
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, each (B, T); V and A are zero past each row's end."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # A_{t+1}, (B,)
    following = torch.zeros_like(values[:, 0])  # V_{t+1}, (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        following = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate (a loss to minimise) and the share of tokens where the clip binds."""
    ratio = torch.exp(logps - old_logps)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        binds = float(masked_mean((clipped > unclipped).float(), mask))
        approx_kl = float(masked_mean(0.5 * (logps - old_logps) ** 2, mask))
    return loss, {"clipfrac": binds, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 * the larger of the plain and the clipped squared error, and the share where the clip binds."""
    moved = old_values + torch.clamp(values - old_values, -clip, clip)
    plain, clipped = (values - returns) ** 2, (moved - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(plain, clipped), mask)
    with torch.no_grad():
        binds = float(masked_mean((clipped > plain).float(), mask))
    return loss, {"vf_clipfrac": binds}


OBJECTIVE = objective.Objective("ppo", "PPO", Config, SHAPES, "ppo_rollouts", uses_reference=objective.always)
