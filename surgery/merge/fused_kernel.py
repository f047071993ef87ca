"""The kernel of `fused`: the TIES family's combine over a span of a block, compiled by numba.

Imported only where numba is installed (`fused.compiled`). Every float32 operation is the torch path's,
in its order, so the two give the same bits. Module-level functions, so numba's disk cache serves
later processes.

The span is computed CHUNK entries at a time: each input's weighted task vector for the chunk is made
once into a scratch row, then the election and the agreeing sum run over the scratch rows, all of it
in L2. Every loop is over slices, indexed from 0: LLVM vectorises those, while the same loop indexed
`lo + q` into the whole array runs about 5x slower (a uint8 mask's product most of all).
"""

from __future__ import annotations

import numba
import numpy as np

CHUNK = 2048  # entries at a time: (inputs + 3) float32 rows of scratch, ~48 KB for three inputs
jit = numba.njit(cache=True, nogil=True, boundscheck=False)
part = numba.njit(inline="always")  # compiled into `combine`


@part
def weighted(v, d, m, t, s):
    """v = one input's weighted, sparsified task vector over a chunk: its delta d, times its 0/1 mask m
    where it has one, hardshrunk by t where t >= 0 (+0 kept, NaN kept), times s."""
    n = len(d)
    if len(m):
        for q in range(n):
            v[q] = d[q] * np.float32(m[q])
    else:
        for q in range(n):
            v[q] = d[q]
    if t >= 0:
        for q in range(n):
            x = v[q]
            v[q] = np.float32(0.0) if abs(x) <= t else x
    if s != 1:
        for q in range(n):
            v[q] = v[q] * s


@part
def elect(sign, vals, by_count):
    """sign = +1 where the inputs' summed mass (or count of signs, with `by_count`) is >= 0, else -1;
    vals: (inputs, >= len(sign)), C-contiguous, so that each row's slice is too."""
    zero, one = np.float32(0.0), np.float32(1.0)
    sign[:] = zero  # +0: the election's sum is never -0
    for i in range(vals.shape[0]):
        v = vals[i, : len(sign)]
        if by_count:
            for q in range(len(sign)):
                x = v[q]
                sign[q] = sign[q] + (one if x > 0 else (-one if x < 0 else zero))  # torch.sign: 0 for 0, NaN
        else:
            for q in range(len(sign)):
                sign[q] = sign[q] + v[q]
    for q in range(len(sign)):
        sign[q] = one if sign[q] >= 0 else -one


@part
def agree(mixed, divisor, sign, vals, weights):
    """mixed = the sum along `sign` of the inputs' entries that agree with it (clamped at 0, NaN kept);
    divisor = the sum of the agreeing inputs' weights."""
    zero = np.float32(0.0)
    mixed[:] = zero
    divisor[:] = zero
    for i in range(vals.shape[0]):
        v, w = vals[i, : len(sign)], weights[i]
        for q in range(len(sign)):
            along = v[q] * sign[q]
            along = zero if along < 0 else along
            mixed[q] = mixed[q] + along
            divisor[q] = divisor[q] + (w if along > 0 else zero)


@jit
def combine(base, deltas, masks, thresholds, scales, weights, by_count, normalize, lambda_, out, lo, hi):
    """out[lo:hi] = base + lambda * (the agreeing sum along the elected sign) / (the agreeing weights, 1
    where none agree, with `normalize`)."""
    one = np.float32(1.0)
    k = len(deltas)
    vals = np.empty((k, CHUNK), np.float32)
    sign_, mixed_, divisor_ = np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32)
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        n = e - c
        sign, mixed, divisor = sign_[:n], mixed_[:n], divisor_[:n]
        for i in range(k):
            m = masks[i]
            weighted(vals[i, :n], deltas[i][c:e], m[c:e] if len(m) else m, thresholds[i], scales[i])
        elect(sign, vals, by_count)
        agree(mixed, divisor, sign, vals, weights)
        b, o = base[c:e], out[c:e]
        for q in range(n):
            x = mixed[q] * sign[q]
            if normalize:
                x = x / (one if divisor[q] == 0 else divisor[q])
            if lambda_ != 1:
                x = x * lambda_
            o[q] = x + b[q]
