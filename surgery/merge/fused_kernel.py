"""The kernel of `fused`: the TIES family's combine over a span of a block, compiled by numba.

Imported only where numba is installed (`fused._kernel`). Every float32 operation is the torch path's,
in its order, so the two give the same bits. Module-level functions, so numba's disk cache serves
later processes.
"""

from __future__ import annotations

import numba
import numpy as np

CHUNK = 4096  # entries computed at a time: the three float32 scratch rows stay in L1/L2
jit = numba.njit(cache=True, nogil=True, boundscheck=False)


@numba.njit(inline="always")
def weighted(d, m, t, s, j):
    """One input's weighted, sparsified task vector at entry j (float32 throughout): d, times its 0/1
    mask where it has one, hardshrunk by t where t >= 0 (+0 kept, NaN kept), times s."""
    v = d[j]
    if len(m):
        v = v * np.float32(m[j])
    if t >= 0 and abs(v) <= t:
        v = np.float32(0.0)
    if s != 1:
        v = v * s
    return v


@jit
def elect(total, d, m, t, s, by_count, lo, hi):
    """total[: hi - lo] += one input's entries lo..hi (their signs with `by_count`)."""
    zero, one = np.float32(0.0), np.float32(1.0)
    for j in range(lo, hi):
        v = weighted(d, m, t, s, j)
        if by_count:
            v = one if v > 0 else (-one if v < 0 else zero)  # torch.sign: 0 for 0 and NaN
        total[j - lo] = total[j - lo] + v


@jit
def agree(mixed, divisor, sign, d, m, t, s, w, lo, hi):
    """mixed += one input's entries lo..hi along the elected sign where they agree with it (clamped at
    0, NaN kept), divisor += w there."""
    zero = np.float32(0.0)
    for j in range(lo, hi):
        along = weighted(d, m, t, s, j) * sign[j - lo]
        if along < 0:
            along = zero
        mixed[j - lo] = mixed[j - lo] + along
        if along > 0:
            divisor[j - lo] = divisor[j - lo] + w


@jit
def combine(base, deltas, masks, thresholds, scales, weights, by_count, normalize, lambda_, out, lo, hi):
    """The span lo..hi, CHUNK entries at a time: one pass per input for the election, one for the
    agreeing sum, each a plain loop over arrays the compiler vectorises, the chunk's scratch in cache."""
    zero, one = np.float32(0.0), np.float32(1.0)
    sign = np.empty(CHUNK, np.float32)
    mixed = np.empty(CHUNK, np.float32)
    divisor = np.empty(CHUNK, np.float32)
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        n = e - c
        sign[:n] = zero  # +0: the election's sum is never -0
        for i in range(len(deltas)):
            elect(sign, deltas[i], masks[i], thresholds[i], scales[i], by_count, c, e)
        for q in range(n):
            sign[q] = one if sign[q] >= 0 else -one
        mixed[:n] = zero
        divisor[:n] = zero
        for i in range(len(deltas)):
            agree(mixed, divisor, sign, deltas[i], masks[i], thresholds[i], scales[i], weights[i], c, e)
        for q in range(n):
            x = mixed[q] * sign[q]
            if normalize:
                x = x / (one if divisor[q] == 0 else divisor[q])
            if lambda_ != 1:
                x = x * lambda_
            out[c + q] = x + base[c + q]
