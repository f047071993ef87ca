"""Linear merge: sum_i w_i m_i, divided by sum_i w_i when `normalize` (Wortsman et al. 2022,
model soups, https://arxiv.org/abs/2203.05482). The base model is not an input unless listed."""

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stats


class Weight(Params):
    weight: float | None = Field(None, description="this model's coefficient")


class LinearShared(Params):
    normalize: bool = Field(True, description="divide by the sum of the weights")


def merge(block: Block, stats: Stats) -> torch.Tensor:
    weights = [p.weight for p in block.per_model]
    out = torch.zeros_like(block.models[0])
    for w, m in zip(weights, block.models):
        out.add_(m, alpha=w)
    return out / sum(weights) if block.shared.normalize else out


METHOD = Method("linear", merge, "weighted average of the models", "https://arxiv.org/abs/2203.05482",
                shared=LinearShared, per_model=Weight, base="unused", required=("weight",), work=1)
