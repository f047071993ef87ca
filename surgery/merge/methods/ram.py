"""RAM, Reinforced Agent Merging: add every task vector's entries that no other model changes, and
average the entries several models change (Yuan et al. 2026, https://arxiv.org/abs/2601.13572).
An entry counts as changed when |m - base| > `epsilon`. Entry by entry, so any block of rows suffices."""

from typing import Annotated

import torch
from pydantic import Field

from surgery.merge.methods.elementwise import Models, elementwise

Epsilon = Annotated[float, Field(gt=0, description="a task-vector entry larger than this in magnitude is a change")]
Changes = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]


def changes(base: torch.Tensor, models: Models, epsilon: float) -> Changes:
    """Per model the task vector and its changed entries (bool), and per entry how many models change it."""
    tvs = [m - base for m in models]  # each (r, ...)
    changed = [tv.abs() > epsilon for tv in tvs]
    counts = torch.zeros(base.shape, dtype=torch.int64, device=base.device)
    for c in changed:
        counts += c
    return tvs, changed, counts


def combine(base: torch.Tensor, found: Changes, scales: list[torch.Tensor | None]) -> torch.Tensor:
    """base + sum_i (tv_i where only model i changes the entry, times scales[i]; tv_i / count where
    several do), in mergekit's order of operations: the same float32 results."""
    tvs, changed, counts = found
    unique, shared, divisor = counts == 1, counts > 1, counts.clamp(min=1)
    out = torch.zeros_like(base)
    for tv, c, scale in zip(tvs, changed, scales):
        kept = tv * c
        alone = kept * unique if scale is None else kept * unique * scale
        out += alone + kept * shared / divisor
    return base + out


def merge(base: torch.Tensor, models: Models, epsilon: Epsilon = 1e-5) -> torch.Tensor:
    return combine(base, changes(base, models, epsilon), [None] * len(models))


METHOD = elementwise(merge, "ram", "add changes only one model makes, average those several make",
                     "https://arxiv.org/abs/2601.13572", work=6)
