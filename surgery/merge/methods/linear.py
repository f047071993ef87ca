"""Linear merge: sum_i w_i m_i, divided by sum_i w_i when `normalize` (Wortsman et al. 2022,
model soups, https://arxiv.org/abs/2203.05482). The base model is not an input unless listed."""

from typing import Annotated

import torch
from pydantic import Field

from surgery.merge.methods.elementwise import Models, PerModel, elementwise


def merge(models: Models, weight: PerModel[Annotated[float, Field(description="this model's coefficient")]],
          normalize: Annotated[bool, Field(description="divide by the sum of the weights")] = True) -> torch.Tensor:
    out = torch.zeros_like(models[0])
    for w, m in zip(weight, models):
        out.add_(m, alpha=w)
    return out / sum(weight) if normalize else out


METHOD = elementwise(merge, "linear", "weighted average of the models", "https://arxiv.org/abs/2203.05482", work=1)
