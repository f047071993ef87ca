"""RAM, Reinforced Agent Merging: add every task vector's entries that no other model changes, and
average the entries several models change (Yuan et al. 2026, https://arxiv.org/abs/2601.13572).
An entry counts as changed when |m - base| > `epsilon`. Entry by entry, so any block of rows suffices."""

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stats


class RamShared(Params):
    epsilon: float = Field(1e-5, gt=0, description="a task-vector entry larger than this in magnitude is a change")


def changes(block: Block) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per model the task vector and its changed entries (bool), and per entry how many models change it."""
    def make():
        tvs = [m - block.base for m in block.models]  # each (r, ...)
        changed = [tv.abs() > block.shared.epsilon for tv in tvs]
        counts = torch.zeros(block.base.shape, dtype=torch.int64, device=block.base.device)
        for c in changed:
            counts += c
        return tvs, changed, counts

    return block.cached("changes", make)


def combine(block: Block, scales: list[torch.Tensor | None]) -> torch.Tensor:
    """base + sum_i (tv_i where only model i changes the entry, times scales[i]; tv_i / count where
    several do), in mergekit's order of operations: the same float32 results."""
    tvs, changed, counts = changes(block)
    unique, shared, divisor = counts == 1, counts > 1, counts.clamp(min=1)
    out = torch.zeros_like(block.base)
    for tv, c, scale in zip(tvs, changed, scales):
        kept = tv * c
        alone = kept * unique if scale is None else kept * unique * scale
        out += alone + kept * shared / divisor
    return block.base + out


def merge(block: Block, stats: Stats) -> torch.Tensor:
    return combine(block, [None] * len(block.models))


METHOD = Method("ram", merge, "add changes only one model makes, average those several make",
                "https://arxiv.org/abs/2601.13572", shared=RamShared, work=6)
