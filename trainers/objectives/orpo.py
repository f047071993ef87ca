"""ORPO: odds-ratio preference optimisation, SFT and preference in one loss, no reference model
(Hong et al. 2024, https://arxiv.org/abs/2403.07691, Eqs. 6-7).

With a = (1/|y|) log pi(y|x) the mean token log-probability of a completion and odds(y) = p / (1 - p)
for p = exp(a), the log odds ratio is

    log OR = log odds(y_w) - log odds(y_l) = (a_w - a_l) - (log(1 - e^{a_w}) - log(1 - e^{a_l}))

and loss = NLL(y_w | x) - lambda * log sigmoid(log OR), the NLL being SFT's mean over the chosen
completions' tokens (`nll_on: all` also counts the prompt's tokens, as TRL's ORPOTrainer does).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.logprobs import IGNORE, Scores, real_tokens, scores, sequence_index, sequence_sums
from trainers.objectives import objective, pairs
from trainers.objectives.pairs import build_batch, collate, encode  # noqa: F401  (called as orpo.build_batch)
from trainers.objectives.sft import mean_nll

SHAPES = pairs.SHAPES


class Config(objective.Config):
    lam: float = Field(0.1, ge=0, description="weight lambda of the odds-ratio term beside the SFT loss")
    nll_on: Literal["completion", "all"] = Field(
        "completion", description="the SFT term's tokens: the chosen completion, or the whole chosen sequence (TRL)")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, accurate at both ends (Maechler 2012: switch at x = -ln 2)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor,
                    lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair penalty -lambda log sigmoid(log OR) (B,) and log OR (B,), from mean token log-probs (B,)."""
    log_or = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
    return -lam * F.logsigmoid(log_or), log_or


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    pairs_count = int(batch["num_items"])
    completion = batch["labels"]
    scored = completion if config.nll_on == "completion" else whole_chosen(batch, pairs_count)
    s = scores(model, batch, scored)
    in_completion = completion[:, 1:][s.where] != IGNORE  # (N,) the odds ratio's tokens, of both sides
    logps, tokens = sequence_sums(s, 2 * pairs_count, in_completion)
    means = logps / tokens.clamp(min=1)  # (2B,)
    penalty, log_or = odds_ratio_loss(*pairs.halves(means), config.lam)
    nll, _ = mean_nll(Scores(*(x[s.sequence < pairs_count] for x in (s.logps, s.correct, s.sequence)), s.where))
    metrics = pairs.reward_metrics(*pairs.halves(config.lam * means))
    return nll + penalty.mean(), {**metrics, "nll": float(nll.detach()),
                                  "log_odds_ratio": float(log_or.detach().mean())}


def whole_chosen(batch: dict[str, torch.Tensor], pairs_count: int) -> torch.Tensor:
    """(R, W) labels of every token of the chosen sequences (but a packed sequence's first, which nothing
    before it predicts) and of the rejected ones' completions."""
    seq = sequence_index(batch)
    chosen = real_tokens(batch) & (seq >= 0) & (seq < pairs_count)
    if "position_ids" in batch:
        chosen &= batch["position_ids"] != 0
    return torch.where(chosen, batch["input_ids"], batch["labels"])


OBJECTIVE = objective.Objective("orpo", "ORPO", Config, SHAPES, "offline",
                                objective.Batches(encode, collate, packs=True), loss)
