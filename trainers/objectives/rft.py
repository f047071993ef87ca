"""RFT, rejection-sampling fine-tuning (Yuan et al. 2023, https://arxiv.org/abs/2308.01825; STaR,
Zelikman et al. 2022, https://arxiv.org/abs/2203.14465): sample N completions per training prompt,
score them with a reward, keep the best of each prompt (or every distinct one at or above a
threshold), and fine-tune on the kept ones with the SFT objective and the offline loop. Optionally in
rounds, each sampling from the previous round's model. The loop is trainers/loops/rejection_sampling.py.

The acceptance rate is the share of prompts with at least one kept completion.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from trainers.objectives import objective

SHAPES = ("prompt_completion",)  # prompts are sampled from; `completion` is what data.eval is scored against


class Config(objective.RewardConfig):
    samples: int = Field(8, ge=1, description="completions sampled per prompt (N)")
    keep: Literal["best", "all"] = Field("best", description="best: the highest-reward completion of each prompt; "
                                         "all: every distinct completion reaching the threshold")
    threshold: float | None = Field(1.0, description="a completion is kept only at or above this reward (null: "
                                    "any, with keep: best)")
    rounds: int = Field(1, ge=1, description="sample-filter-train rounds, each from the previous round's model")
    rows_per_round: int | None = Field(None, ge=1, description="training prompts sampled each round (default: all)")
    max_new_tokens: int = Field(32, ge=1, description="longest completion sampled")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")


def select(rewards: torch.Tensor, texts: list[str], n: int, keep: str, threshold: float | None) -> list[list[int]]:
    """Indices kept in each group of n consecutive samples (rewards (P*n,)); ties go to the earlier sample."""
    kept = []
    for p in range(len(texts) // n):
        group = range(p * n, (p + 1) * n)
        ok = [i for i in group if threshold is None or float(rewards[i]) >= threshold]
        if keep == "best":
            kept.append([max(ok, key=lambda i: (float(rewards[i]), -i))] if ok else [])
        else:
            firsts = {}
            for i in ok:
                firsts.setdefault(texts[i], i)
            kept.append(sorted(firsts.values()))
    return kept


OBJECTIVE = objective.Objective("rft", "RFT", Config, SHAPES, "rejection_sampling")
