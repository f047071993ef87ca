"""Linear merge: sum_i w_i m_i, divided by sum_i w_i when `normalize` (Wortsman et al. 2022,
model soups, https://arxiv.org/abs/2203.05482). The base model is not an input unless listed."""

from typing import Annotated

import torch
from pydantic import BaseModel, Field

from surgery.merge import blend
from surgery.merge.methods.elementwise import Models, PerModel, elementwise

ZERO_SUM = 1e-8  # a sum of weights this small would blow the merged weights up to Inf or NaN
FLOAT32_MAX = torch.finfo(torch.float32).max


def merge(models: Models, weight: PerModel[Annotated[float, Field(description="this model's coefficient")]],
          normalize: Annotated[bool, Field(description="divide by the sum of the weights")] = True) -> torch.Tensor:
    out = torch.zeros_like(models[0])
    for w, m in zip(weight, models):
        out.add_(m, alpha=w)
    return out / sum(weight) if normalize else out


def check(shared: BaseModel, per_model: tuple[BaseModel, ...]) -> str | None:
    """Weights the merge cannot compute with, found when planning: one beyond float32's range (torch refuses
    it as a factor), or a sum of zero that `normalize` would divide by."""
    weights = [p.weight for p in per_model]
    big = [w for w in weights if abs(w) > FLOAT32_MAX]
    if big:
        return f"weight {big[0]:g} is too large for float32 arithmetic (at most {FLOAT32_MAX:.3g})"
    if shared.normalize and abs(sum(weights)) < ZERO_SUM:
        return (f"normalize divides by the sum of the weights, which is 0 ({', '.join(f'{w:g}' for w in weights)}); "
                "change a weight or set parameters.normalize: false")
    return None


def compiled(models: Models, weight: list[float], normalize: bool = True) -> torch.Tensor | None:
    """`merge` from the rows as stored, the same bits; None where the kernels do not run."""
    return blend.weighted_sum(models, weight, sum(weight) if normalize else None)


METHOD = elementwise(merge, "linear", "weighted average of the models", "https://arxiv.org/abs/2203.05482", work=1,
                     check=check, compiled=compiled)
