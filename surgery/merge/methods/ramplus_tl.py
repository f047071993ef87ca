"""RAM+ (tensor-local): RAM, with each model's unshared changes scaled up by 1 + r * min(rho, alpha),
rho being how many of its changes other models share per change it alone makes, counted over the
whole tensor (Yuan et al. 2026, https://arxiv.org/abs/2601.13572). The counts are one statistics
stage (exact integers summed over blocks); the merge is then entry by entry."""

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stage, Stats
from surgery.merge.methods.ram import Changes, changes, combine


class RamPlusShared(Params):
    epsilon: float = Field(1e-5, gt=0, description="a task-vector entry larger than this in magnitude is a change")
    r: float = Field(0.1, ge=0, description="how much a model's shared-change ratio raises its unshared changes")
    alpha: float = Field(0.2, ge=0, description="cap on the shared-change ratio")


def _changes(block: Block) -> Changes:
    return block.cached("changes", lambda: changes(block.base, list(block.models), block.shared.epsilon))


def counts(block: Block, stats: Stats) -> Stats:
    """Per model: changes others share too, and changes it alone makes (int64, exact over blocks)."""
    _, changed, count = _changes(block)
    out: Stats = {}
    for i, c in enumerate(changed):
        out[f"shared{i}"] = (c & (count > 1)).sum()
        out[f"alone{i}"] = (c & (count == 1)).sum()
    return out


def merge(block: Block, stats: Stats) -> torch.Tensor:
    p = block.shared
    scales = []
    for i in range(len(block.models)):
        rho = stats[f"shared{i}"].float() / stats[f"alone{i}"].clamp(min=p.epsilon)  # float32, as mergekit
        rho = rho.nan_to_num(nan=0.0)  # no changes at all, with an epsilon that is 0 in float32: 0 / 0
        scales.append(1 + p.r * rho.clamp(min=0, max=p.alpha))
    return combine(block.base, _changes(block), scales)


METHOD = Method("ramplus_tl", merge, "RAM with unshared changes scaled by how much a model's changes are shared",
                "https://arxiv.org/abs/2601.13572", shared=RamPlusShared, stages=(Stage(counts),), work=6)
