"""Exact order statistics of |x| over a tensor seen one block at a time, without sorting.

A non-negative float32's bit pattern, read as an integer, orders like the float. Stage one counts
the top 16 bits (32,768 bins for non-negative values); the bin that holds the wanted rank is then
resolved by counting the low 16 bits of just that bin's members. Two linear passes, two small
histograms, the exact value: this replaces the full sort mergekit's TIES spends most of its time in.
"""

from __future__ import annotations

import torch

HI_BINS = 1 << 15  # sign bit is clear for |x|
LO_BINS = 1 << 16


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.abs().float().contiguous().view(torch.int32).reshape(-1)


def high_histogram(x: torch.Tensor) -> torch.Tensor:
    """(32768,) int64 counts of |x| by the top 16 bits."""
    return torch.bincount(_bits(x) >> 16, minlength=HI_BINS)


def bin_of_rank(high: torch.Tensor, rank: int) -> int:
    """The top-16-bit bin holding the element of ascending `rank` (0-based)."""
    cum = torch.cumsum(high, 0)
    return int(torch.searchsorted(cum, torch.tensor(rank, dtype=cum.dtype, device=cum.device), right=True))


def low_histogram(x: torch.Tensor, hi_bin: int) -> torch.Tensor:
    """(65536,) int64 counts of the low 16 bits of those |x| whose top bits equal `hi_bin`."""
    bits = _bits(x)
    members = bits[(bits >> 16) == hi_bin]
    return torch.bincount(members & 0xFFFF, minlength=LO_BINS)


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
