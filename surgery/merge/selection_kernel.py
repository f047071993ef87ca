"""The counting passes of `selection`, compiled by numba, for float32 blocks on CPU.

Imported only where numba is installed (`fused.compiled`). Counts are integers, so these give
exactly what the torch path gives; they read each entry's bits once, where the torch path makes a
fresh block-sized tensor for |x|, another for the keys, and counts them with a one-thread bincount:
about 4x less time per pass (bench/README.md).
"""

from __future__ import annotations

import numba
import numpy as np

from surgery.merge.fused_kernel import CHUNK, chunk_delta, scratch

HI_BINS = 1 << 15  # selection.HI_BINS: compile-time constants here, so that the loops specialise on them
LO_BINS = 1 << 16  # selection.LO_BINS
MAGNITUDE = 0x7FFFFFFF  # a float32's bits less its sign: |x|'s bits
LANES = 4  # histograms counted side by side, so that equal neighbours do not wait on one another's store
jit = numba.njit(cache=True, nogil=True, boundscheck=False)


part = numba.njit(inline="always")  # compiled into the kernels below


@part
def count_high(lanes, bits):
    """Add to `lanes` the counts of |x| by its top 16 bits; bits: x's float32 bits (int32 or uint32)."""
    n = len(bits)
    whole = n // LANES * LANES
    for j in range(0, whole, LANES):
        for lane in range(LANES):
            lanes[lane, (bits[j + lane] & MAGNITUDE) >> 16] += 1
    for j in range(whole, n):
        lanes[0, (bits[j] & MAGNITUDE) >> 16] += 1


@part
def count_low(lanes, bits, first):
    """Add to `lanes` the counts of the low 16 bits of those |x| whose bits lie in [first, first + LO_BINS)."""
    n = len(bits)
    whole = n // LANES * LANES
    for j in range(0, whole, LANES):
        for lane in range(LANES):
            k = np.int64(bits[j + lane] & MAGNITUDE) - first
            if 0 <= k < LO_BINS:
                lanes[lane, k] += 1
    for j in range(whole, n):
        k = np.int64(bits[j] & MAGNITUDE) - first
        if 0 <= k < LO_BINS:
            lanes[0, k] += 1


@part
def count_equal(bits, magnitude):
    count = 0
    for j in range(len(bits)):
        count += (bits[j] & MAGNITUDE) == magnitude
    return count


@jit
def high_counts(bits):
    """(HI_BINS,) int64 counts of |x| by its top 16 bits; bits: x's float32 bits as int32."""
    lanes = np.zeros((LANES, HI_BINS), np.int64)
    count_high(lanes, bits)
    return lanes.sum(axis=0)


@jit
def low_counts(bits, first):
    """(LO_BINS,) int64 counts of the low 16 bits of those |x| whose bits lie in [first, first + LO_BINS)."""
    lanes = np.zeros((LANES, LO_BINS), np.int64)
    count_low(lanes, bits, first)
    return lanes.sum(axis=0)


@jit
def equal_count(bits, magnitude):
    """How many |x| have the bits `magnitude` (a positive float32's, not NaN's: equal bits, equal floats)."""
    return count_equal(bits, magnitude)


# The same counts of a task vector model - base made chunk by chunk from the stored rows (`fused_kernel`),
# never whole.


@jit
def high_counts_of(base, model):
    lanes = np.zeros((LANES, HI_BINS), np.int64)
    bits, rows = scratch(2)
    for c in range(0, len(base), CHUNK):
        count_high(lanes, chunk_delta(base, model, c, min(c + CHUNK, len(base)), bits, rows))
    return lanes.sum(axis=0)


@jit
def low_counts_of(base, model, first):
    lanes = np.zeros((LANES, LO_BINS), np.int64)
    bits, rows = scratch(2)
    for c in range(0, len(base), CHUNK):
        count_low(lanes, chunk_delta(base, model, c, min(c + CHUNK, len(base)), bits, rows), first)
    return lanes.sum(axis=0)


@jit
def equal_count_of(base, model, magnitude):
    count = 0
    bits, rows = scratch(2)
    for c in range(0, len(base), CHUNK):
        count += count_equal(chunk_delta(base, model, c, min(c + CHUNK, len(base)), bits, rows), magnitude)
    return count


INF = 0x7F800000  # +inf's bits: |x| bits above it are NaN's


@jit
def ranked_mask(bits, cut, quota, seen, out):
    """out = 1 where |x| > the cut, or |x| equals it and is among the first `quota` such entries of the
    tensor (`seen` of them came before this block), else 0 (NaN: 0, as a float comparison gives); bits:
    x's float32 bits, cut: the cut's. Returns the ties seen so far, this block's included."""
    for q in range(len(bits)):
        a = bits[q] & MAGNITUDE
        if a == cut:
            seen += 1
            out[q] = seen <= quota
        else:
            out[q] = cut < a <= INF
    return seen
