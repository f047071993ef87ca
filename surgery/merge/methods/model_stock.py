"""Model Stock: move from the base toward the average of the fine-tunes by a factor set from the
angle between their task vectors, t = N cos / (1 + (N - 1) cos) (Jang et al. 2024,
https://arxiv.org/abs/2403.19522). Tensor-wide cosines are one statistics stage; `filter_wise`
computes them per row instead."""

from itertools import combinations

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stage, Stats


class StockShared(Params):
    filter_wise: bool = Field(False, description="one interpolation factor per row instead of per tensor")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(r, c) view of a tensor's rows; a 1-d tensor is one row. flatten(1) also handles 0 rows."""
    return x.reshape(1, -1) if x.dim() < 2 else x.flatten(1)


def _flat(block: Block) -> list[torch.Tensor]:
    if block.shared.filter_wise:  # (r, c): statistics per row
        return [_rows(m - block.base) for m in block.models]
    return [(m - block.base).reshape(1, -1).double() for m in block.models]


def products(block: Block, stats: Stats) -> Stats:
    d = _flat(block)
    out = {f"n{i}": (x * x).sum() for i, x in enumerate(d)}
    out.update({f"d{i}.{j}": (d[i] * d[j]).sum() for i, j in combinations(range(len(d)), 2)})
    return out


def _cosine(block: Block, stats: Stats) -> torch.Tensor:
    """Mean pairwise cosine of the task vectors: a scalar, or (r, 1) with filter_wise."""
    cosines = []
    if block.shared.filter_wise:
        d = _flat(block)
        for i, j in combinations(range(len(d)), 2):
            norm = (d[i].norm(dim=-1) * d[j].norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((d[i] * d[j]).sum(-1) / norm).clamp(-1, 1))
        return torch.stack(cosines).mean(0).unsqueeze(-1)
    for i, j in combinations(range(len(block.models)), 2):
        norm = (stats[f"n{i}"].sqrt() * stats[f"n{j}"].sqrt()).clamp(min=1e-6)
        cosines.append((stats[f"d{i}.{j}"] / norm).clamp(-1, 1))
    return torch.stack(cosines).mean().float()


def merge(block: Block, stats: Stats) -> torch.Tensor:
    cos = _cosine(block, stats)
    n = len(block.models)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # opposing updates: keep the base rather than amplify them
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1, denominator))
    average = sum(block.models) / n
    if block.shared.filter_wise:
        rows = _rows(block.base)
        return (t * average.reshape_as(rows) + (1 - t) * rows).reshape(block.base.shape)
    return t * average + (1 - t) * block.base


METHOD = Method("model_stock", merge, "interpolate base and average by the task vectors' angle",
                "https://arxiv.org/abs/2403.19522", shared=StockShared, min_models=2, work=3,
                stages=(Stage(products, when=lambda shared, models: not shared.filter_wise),))
