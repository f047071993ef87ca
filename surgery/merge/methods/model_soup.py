"""Model soup: the uniform average of the listed models (Wortsman et al. 2022,
https://arxiv.org/abs/2203.05482); `linear` with equal weights, no parameters to set."""

import torch

from surgery.merge.methods.method import Block, Method, Stats


def merge(block: Block, stats: Stats) -> torch.Tensor:
    out = torch.zeros_like(block.models[0])
    for m in block.models:
        out += m
    return out / len(block.models)


METHOD = Method("model_soup", merge, "uniform average of the models", "https://arxiv.org/abs/2203.05482",
                base="unused", work=1)
