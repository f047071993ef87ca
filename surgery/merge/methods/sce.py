"""SCE: Select the entries where the task vectors vary most across models (`select_topk`, by
variance), Calculate each model's weight from its selected task vector's mean square, Erase the
entries whose sign disagrees with the elected one, and take the weighted mean of the rest (Wan et
al. 2024, FuseChat, https://arxiv.org/abs/2408.07990).

Blocked execution: the variance cut-off is an exact order statistic found with two histogram stages
(as TIES's magnitude cut-off, `surgery.merge.selection`); the models' mean squares are one more stage.
On CPU the variance, the mean squares and the merge are compiled from the stored rows (`fused.variance`,
`fused.sce_energies`, `fused.sce_merge`: the torch path's bits), so no float32 task vector or mask is made.
"""

import math
from collections.abc import Callable

import torch
from pydantic import Field

from surgery.merge import fused
from surgery.merge.methods.method import Block, Method, Params, Stage, Stats, compat
from surgery.merge.methods.task_vectors import _deltas, _elect, _sources, total
from surgery.merge.selection import (
    bin_of_rank,
    high_histogram,
    low_histogram,
    top_k_cut,
    top_k_mask,
    top_k_threshold,
)


class SceShared(Params):
    select_topk: float = Field(1.0, ge=0, le=1, description="share of the entries that vary most across models kept")
    int8_mask: bool = compat(False, "int8 masks to save memory; masks here are always compact")


def _tvs(block: Block) -> list[torch.Tensor]:
    return _deltas(block)  # each (r, ...) float32, read-only; made from the stored rows where compiled


def _variance(block: Block) -> torch.Tensor:
    """Per entry, the variance of the task vectors across models (population): the bits of mergekit's
    torch.var over the stacked task vectors, which runs Welford's update in float64 per entry and
    rounds to float32; done here one model at a time, three times faster than torch.var across a
    stacked axis. Two models need no update: their variance is ((a - b) / 2)^2, exact in float64. Each
    pass reads the tensor again; the variance of its first read is kept for the others where it fits."""
    return block.carried("var", lambda: computed_variance(block))  # kept for the tensor's next read


def computed_variance(block: Block) -> torch.Tensor:
    """The block's variance: compiled from the stored rows where it can be (the same bits), else in torch."""
    src = _sources(block)
    if src is not None and src.models:
        return fused.variance(src)
    return welford_variance(_tvs(block))


def welford_variance(xs: list[torch.Tensor]) -> torch.Tensor:
    """The first update is written out: the mean becomes the first value, M2 stays 0 (up to the sign
    of a zero, which no use of the variance tells apart: each takes its magnitude)."""
    if len(xs) == 2:
        return (xs[0].double() - xs[1].double()).square_().div_(4).float()
    mean = xs[0].to(torch.float64, copy=True)
    m2 = torch.zeros_like(mean)
    for k, x in enumerate(xs[1:], start=2):
        x = x.to(torch.float64, copy=True)  # updated in place below
        delta = x - mean
        mean.add_(delta / k)
        m2.add_(delta.mul_(x.sub_(mean)))
    return m2.div_(len(xs)).float()


def _k(block: Block, stats: Stats) -> int:
    """How many entries are selected: select_topk of those whose variance is not zero."""
    return int(stats["nonzero"] * block.shared.select_topk)  # float32 product, as mergekit's


def histogram(block: Block, stats: Stats) -> Stats:
    var = _variance(block)
    high = high_histogram(var)
    if not int(high[0]):  # zeros are in bin 0: none there, none at all
        return {"hi": high, "nonzero": torch.tensor(var.numel())}
    return {"hi": high, "nonzero": torch.count_nonzero(var)}


def refine(block: Block, stats: Stats) -> Stats:
    k = _k(block, stats)
    if k == 0:
        return {}
    b = bin_of_rank(stats["hi"], block.numel - k)
    return {f"lo{b}": low_histogram(_variance(block), b)}


def selection(block: Block, stats: Stats) -> fused.Selected:
    """The block's selected entries; blocks in row order per pass (ties at the cut are counted as they
    come), so call it once per block and pass."""
    if block.shared.select_topk >= 1:
        return fused.Selected()
    k = _k(block, stats)
    if k == 0:
        return fused.Selected(_variance(block), math.inf)  # none: no variance is above it
    if "~cut" not in stats:  # once per pass
        b = bin_of_rank(stats["hi"], block.numel - k)
        stats["~cut"] = top_k_cut(stats["hi"], stats[f"lo{b}"], b, block.numel, k)
    cut, quota = stats["~cut"]
    var, seen = _variance(block), int(stats.get("~seen", 0))
    if cut > 0:
        threshold, stats["~seen"] = top_k_threshold(var, cut, quota, seen)
        if threshold is not None:
            return fused.Selected(var, threshold)
    mask, stats["~seen"] = top_k_mask(var, cut, quota, seen)  # the block where the quota fills, or a cut of 0
    return fused.Selected(mask=mask)


def selected(block: Block, sel: fused.Selected) -> torch.Tensor | None:
    """The selection as float32 0/1, None where it is every entry."""
    if sel.mask is not None:
        return sel.mask.float()
    if sel.variance is None:
        return None
    if sel.threshold == math.inf:
        stored = block.stored_models[0]
        return torch.zeros(stored.shape, dtype=torch.float32, device=stored.device)
    # var >= 0: the sign of hardshrink is the float 0/1 mask (NaN gives 0); a comparison into a bool tensor
    # costs several times more
    return torch.nn.functional.hardshrink(sel.variance, sel.threshold).sign_()


def _masked(block: Block, sel: fused.Selected) -> list[torch.Tensor]:
    mask = selected(block, sel)
    return list(_tvs(block)) if mask is None else [tv * mask for tv in _tvs(block)]


def energy(block: Block, stats: Stats) -> Stats:
    """Each selected task vector's sum of squares (float64): compiled from the stored rows where it can be."""
    sel, src = selection(block, stats), _sources(block)
    sums = None if src is None else fused.sce_energies(src, sel)
    if sums is None:
        return {f"sq{i}": total(tv * tv, block.shape) for i, tv in enumerate(_masked(block, sel))}
    return {f"sq{i}": torch.tensor(s, dtype=torch.float64) for i, s in enumerate(sums)}


def _weights(block: Block, stats: Stats) -> list[float]:
    """Each model's mean square over the sum of them; equal weights when that sum is below 1e-6."""
    n = len(block.stored_models)
    means = [float(stats[f"sq{i}"]) / max(block.numel, 1) for i in range(n)]
    return [1.0 / n] * n if abs(sum(means)) < 1e-6 else [m / sum(means) for m in means]


def merge(block: Block, stats: Stats) -> torch.Tensor:
    sel, src, weights = selection(block, stats), _sources(block), _weights(block, stats)
    out = None if src is None else fused.sce_merge(src, sel, weights)
    if out is not None:
        return out
    tvs = _masked(block, sel)
    elected = _elect(tvs, "sum")
    mixed, divisor = torch.zeros_like(tvs[0]), torch.zeros_like(tvs[0])
    for w, tv in zip(weights, tvs):
        # w_i where tv_i's sign is the elected one (+-1), else 0, made in place: a comparison into a new
        # bool tensor costs several times more. A zero may come out -0 here; the sums start at +0, and
        # adding -0 to them changes no bit
        kept = tv.sign().mul_(elected).clamp_(min=0).mul_(w)
        divisor.add_(kept)
        mixed.add_(kept.mul_(tv))
    return block.base + mixed / divisor.clamp_(min=1e-6)


def selecting(shared: SceShared, models: tuple) -> bool:
    return shared.select_topk < 1


def prepare(block: Block, final: bool, ahead: Callable[[], bool]) -> None:
    """Task vectors, and their variance while the reading thread is ahead of the merging one (which
    otherwise computes it when it needs it): the variance is most of every pass's work."""
    if _sources(block) is None:  # the compiled kernels read the stored rows
        _tvs(block)
    if block.shared.select_topk < 1 and ahead():
        _variance(block)


METHOD = Method("sce", merge, "select high-variance entries, weight models by energy, erase minority signs",
                "https://arxiv.org/abs/2408.07990", shared=SceShared, work=6, stored_work=2, prepare=prepare,
                stages=(Stage(histogram, when=selecting), Stage(refine, when=selecting, carried="var"),
                        Stage(energy)))
