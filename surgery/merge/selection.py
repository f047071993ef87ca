"""Exact order statistics of |x| over a tensor seen one block at a time, without sorting.

A non-negative float32's bit pattern, read as an integer, orders like the float. Stage one counts
the top 16 bits (32,768 bins for non-negative values); the bin that holds the wanted rank is then
resolved by counting the low 16 bits of just that bin's members. Two linear passes, two small
histograms, the exact value: this replaces the full sort mergekit's TIES spends most of its time in.
"""

from __future__ import annotations

import numpy as np
import torch

from surgery.merge import fused

HI_BINS = 1 << 15  # sign bit is clear for |x|
LO_BINS = 1 << 16
ZEROS_WORTH = 8  # count a block's zeros where they may be an eighth of it or more


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.abs().float().contiguous().view(torch.int32).reshape(-1)


class _Bits:
    """The compiled counting passes over a float32 block's bits (the interface of `fused.Delta`)."""

    def __init__(self, kernels, bits):
        self.kernels, self.bits = kernels, bits

    def high_counts(self):
        return self.kernels.high_counts(self.bits)

    def low_counts(self, first: int):
        return self.kernels.low_counts(self.bits, first)

    def equal_count(self, magnitude: int) -> int:
        return int(self.kernels.equal_count(self.bits, magnitude))


def _compiled(x: torch.Tensor | fused.Delta):
    """The compiled counting passes (`selection_kernel`) over x: a task vector read from the stored
    rows (`fused.Delta`), or a float32 block on CPU, contiguous, where numba is installed
    (`SURGERY_FUSED=0` turns them off, as it does the compiled combine); else None: torch counts."""
    if isinstance(x, fused.Delta):
        return x
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or not fused.enabled():
        return None
    kernels = fused.compiled("selection_kernel")
    return None if kernels is None else _Bits(kernels, x.reshape(-1).view(torch.int32).numpy())


def high_histogram(x: torch.Tensor | fused.Delta) -> torch.Tensor:
    """(32768,) int64 counts of |x| by the top 16 bits."""
    if (compiled := _compiled(x)) is not None:
        return torch.from_numpy(compiled.high_counts())
    return torch.bincount(_bits(x).bitwise_right_shift_(16), minlength=HI_BINS)  # the bits are a fresh tensor


def histogram_and_zeros(x: torch.Tensor | fused.Delta) -> tuple[torch.Tensor, torch.Tensor]:
    """`high_histogram(x)` and a lower bound on the number of exact zeros in x (a 0-dim int64). Knowing
    the zeros, a cut-off rank that falls among them needs no second pass: the value there is 0. Bin 0
    holds them beside the few |x| under 2**-133, so they are counted only where that bin holds at least
    ZEROS_WORTH of the block; elsewhere 0 is reported, which is safe (a rank above the bound takes the
    second pass, which finds the exact value) and spares dense blocks a pass that cannot pay."""
    high = high_histogram(x)
    if int(high[0]) * ZEROS_WORTH < x.numel():
        return high, torch.zeros((), dtype=torch.int64, device=high.device)
    if (compiled := _compiled(x)) is not None:
        return high, torch.tensor(compiled.equal_count(0), dtype=torch.int64)
    return high, x.numel() - torch.count_nonzero(_bits(x))  # -0 is a zero too; int32 counts are the cheaper


def blank_histogram(numel: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`histogram_and_zeros` of `numel` zeros, without looking at them."""
    high = torch.zeros(HI_BINS, dtype=torch.int64, device=device)
    high[0] = numel
    return high, torch.tensor(numel, dtype=torch.int64, device=device)


def bin_of_rank(high: torch.Tensor, rank: int) -> int:
    """The top-16-bit bin holding the element of ascending `rank` (0-based)."""
    cum = torch.cumsum(high, 0)
    return int(torch.searchsorted(cum, torch.tensor(rank, dtype=cum.dtype, device=cum.device), right=True))


def low_histogram(x: torch.Tensor | fused.Delta, hi_bin: int) -> torch.Tensor:
    """(65536,) int64 counts of the low 16 bits of those |x| whose top bits equal `hi_bin`.

    The bin's members are not gathered (a boolean index costs more than the count): every |x| is
    counted by its bits less the bin's first bits (no int32 overflow: both are non-negative), clamped to
    [-1, 65536] and shifted by one, so that the entries below the bin fall in the first slot and those
    above it in the last, both dropped."""
    if (compiled := _compiled(x)) is not None:
        return torch.from_numpy(compiled.low_counts(hi_bin << 16))
    keys = _bits(x).sub_(hi_bin << 16).clamp_(-1, LO_BINS).add_(1)
    return torch.bincount(keys, minlength=LO_BINS + 2)[1:LO_BINS + 1]


def value_of_rank(high: torch.Tensor, low: torch.Tensor, hi_bin: int, rank: int) -> float:
    """|x| at ascending `rank`, given both histograms (`low` for `hi_bin`)."""
    below = int(high[:hi_bin].sum())
    cum = torch.cumsum(low, 0)
    lo_bin = int(torch.searchsorted(cum, torch.tensor(rank - below, dtype=cum.dtype, device=cum.device), right=True))
    bits = torch.tensor([(hi_bin << 16) | lo_bin], dtype=torch.int32)
    return float(bits.view(torch.float32))


def counts_at(high: torch.Tensor, low: torch.Tensor, hi_bin: int, rank: int) -> tuple[int, int]:
    """(entries greater than, entries equal to) the value at ascending `rank`."""
    below = int(high[:hi_bin].sum())
    cum = torch.cumsum(low, 0)
    lo_bin = int(torch.searchsorted(cum, torch.tensor(rank - below, dtype=cum.dtype, device=cum.device), right=True))
    return int(high[hi_bin + 1:].sum()) + int(low[lo_bin + 1:].sum()), int(low[lo_bin])


def top_k_cut(high: torch.Tensor, low: torch.Tensor, hi_bin: int, numel: int, k: int) -> tuple[float, int | None]:
    """(the k-th largest |x|, how many entries equal to it belong to the top k, or None when all do)."""
    rank = numel - k
    greater, equal = counts_at(high, low, hi_bin, rank)
    quota = k - greater
    return value_of_rank(high, low, hi_bin, rank), (quota if quota < equal else None)


def below(cut: float) -> float:
    """The largest float32 under `cut` (> 0): |x| > that is |x| >= cut for every float32 x."""
    return float(torch.nextafter(torch.tensor(cut, dtype=torch.float32), torch.tensor(0.0)))


def top_k_threshold(x: torch.Tensor | fused.Delta, cut: float, quota: int | None,
                    seen: int) -> tuple[float | None, int]:
    """For a cut > 0: t such that the block's entries among the k largest |x| are exactly those with
    |x| > t, and the running count of ties seen so far (as `top_k_mask`'s). That is the float32 below
    the cut while every tie is kept, the cut once the quota is full (later ties need no counting), and
    None for the one block where the quota fills: `top_k_mask` ranks its ties. With t, `hardshrink`
    applies the selection in one pass: a comparison into a bool tensor costs several times more."""
    if quota is None:
        return below(cut), seen
    if seen >= quota:
        return cut, seen
    compiled = _compiled(x)
    if compiled is not None:
        here = compiled.equal_count(int(torch.tensor(cut, dtype=torch.float32).view(torch.int32)))
    else:
        here = int(torch.count_nonzero(x.abs().eq_(cut)))  # 1.0 where tied, else 0.0
    return (below(cut) if seen + here <= quota else None), seen + here


def top_k_mask(x: torch.Tensor, cut: float, quota: int | None, seen: int) -> tuple[torch.Tensor, int]:
    """The entries of a block among the k largest |x| of its tensor (bool), and the running count of
    entries equal to the cut seen so far: of those, the first `quota` in row-major order are kept, so
    exactly k entries are, whatever the blocking (blocks must come in row order, `seen` carried over)."""
    if quota is None:
        return x.abs() >= cut, seen
    if (compiled := _compiled(x)) is not None:  # one pass, where torch makes five block-sized tensors
        mask = torch.empty(x.shape, dtype=torch.bool)
        magnitude = int(torch.tensor(cut, dtype=torch.float32).view(torch.int32))
        out = mask.reshape(-1).numpy().view(np.uint8)
        seen = compiled.kernels.ranked_mask(compiled.bits, magnitude, quota, seen, out)
        return mask, int(seen)
    a = x.abs()
    tied = a == cut
    here = int(tied.sum())
    if seen >= quota:
        return a > cut, seen + here
    if seen + here <= quota:
        return a >= cut, seen + here
    order = tied.reshape(-1).cumsum(0).reshape(tied.shape) + seen  # 1-based rank among ties
    return (a > cut) | (tied & (order <= quota)), seen + here


# ---- signed values: order statistics of x itself, not of |x| --------------------------------------------

SIGNED_HI_BINS = 1 << 16


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """float32 values as int64 keys in [0, 2**32) that order as the floats do (-0.0 just below +0.0):
    negative floats' magnitude bits are flipped, then the sign range is shifted up."""
    bits = x.float().contiguous().view(torch.int32).reshape(-1).to(torch.int64)  # sign-extended
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)


def signed_high_histogram(x: torch.Tensor) -> torch.Tensor:
    """(65536,) int64 counts of x by the top 16 bits of its order key."""
    return torch.bincount(_ordered(x) >> 16, minlength=SIGNED_HI_BINS)


def signed_low_histogram(x: torch.Tensor, hi_bin: int) -> torch.Tensor:
    """(65536,) int64 counts of the low 16 bits of the keys of those x in `hi_bin`."""
    keys = _ordered(x)
    return torch.bincount(keys[(keys >> 16) == hi_bin] & 0xFFFF, minlength=LO_BINS)


def signed_value_of_rank(high: torch.Tensor, low: torch.Tensor, hi_bin: int, rank: int) -> float:
    """x at ascending `rank` (0-based), given both histograms (`low` for `hi_bin`)."""
    below = int(high[:hi_bin].sum())
    cum = torch.cumsum(low, 0)
    lo_bin = int(torch.searchsorted(cum, torch.tensor(rank - below, dtype=cum.dtype, device=cum.device), right=True))
    key = ((hi_bin << 16) | lo_bin) - (1 << 31)
    bits = key ^ 0x7FFFFFFF if key < 0 else key
    return float(torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32))
