"""Linear merge: sum_i w_i m_i, divided by sum_i w_i when `normalize` (Wortsman et al. 2022,
model soups, https://arxiv.org/abs/2203.05482). The base model is not an input unless listed."""

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stats

ZERO_SUM = 1e-8  # a sum of weights this small would blow the merged weights up to Inf or NaN
FLOAT32_MAX = torch.finfo(torch.float32).max


class Weight(Params):
    weight: float | None = Field(None, description="this model's coefficient")


class LinearShared(Params):
    normalize: bool = Field(True, description="divide by the sum of the weights")


def check(shared: LinearShared, per_model: tuple[Weight, ...]) -> str | None:
    weights = [p.weight for p in per_model]
    big = [w for w in weights if abs(w) > FLOAT32_MAX]
    if big:  # torch refuses such a factor for float32 tensors
        return f"weight {big[0]:g} is too large for float32 arithmetic (at most {FLOAT32_MAX:.3g})"
    if shared.normalize and abs(sum(weights)) < ZERO_SUM:
        return (f"normalize divides by the sum of the weights, which is 0 ({', '.join(f'{w:g}' for w in weights)}); "
                "change a weight or set parameters.normalize: false")
    return None


def merge(block: Block, stats: Stats) -> torch.Tensor:
    weights = [p.weight for p in block.per_model]
    out = torch.zeros_like(block.models[0])
    for w, m in zip(weights, block.models):
        out.add_(m, alpha=w)
    return out / sum(weights) if block.shared.normalize else out


METHOD = Method("linear", merge, "weighted average of the models", "https://arxiv.org/abs/2203.05482",
                shared=LinearShared, per_model=Weight, base="unused", required=("weight",), work=1, check=check)
