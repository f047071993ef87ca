"""Model soup: the uniform average of the listed models (Wortsman et al. 2022,
https://arxiv.org/abs/2203.05482); `linear` with equal weights, no parameters to set."""

import torch

from surgery.merge.methods.elementwise import Models, elementwise


def merge(models: Models) -> torch.Tensor:
    out = torch.zeros_like(models[0])
    for m in models:
        out += m
    return out / len(models)


METHOD = elementwise(merge, "model_soup", "uniform average of the models", "https://arxiv.org/abs/2203.05482", work=1)
