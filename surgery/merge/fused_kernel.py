"""The kernels of `fused`, compiled by numba: the task-vector family's combine, L1 sums and deltas,
reading the inputs' rows as stored.

Imported only where numba is installed (`fused.compiled`). Every float32 operation is the torch path's,
in its order, so the two give the same bits. Module-level functions, so numba's disk cache serves
later processes.

Inputs arrive as stored: bf16 as its uint16 bits, or float32 (other dtypes are converted by torch
first). `widen` makes float32 of a chunk (a bf16 is the top half of the float32 of the same value), so a
bf16 model is never converted whole: the delta m - base of each chunk is computed from the stored rows.

A span is computed CHUNK entries at a time: each input's weighted task vector for the chunk is made
once into a scratch row, then the election and the agreeing sum run over the scratch rows, all of it
in L2. Every loop is over slices, indexed from 0: LLVM vectorises those, while the same loop indexed
`lo + q` into the whole array runs about 5x slower (a uint8 mask's product most of all).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

CHUNK = 2048  # entries at a time: (inputs + 3) float32 rows of scratch, ~48 KB for three inputs
jit = numba.njit(cache=True, nogil=True, boundscheck=False)
part = numba.njit(inline="always")  # compiled into the kernels below


def widen(src, bits, floats):
    """floats[:] = the float32 values of stored entries `src`, through `bits`, the same scratch as uint32
    (compiled only, through the overload below)."""
    raise NotImplementedError("compiled code only")


@overload(widen, inline="always")
def _widen(src, bits, floats):
    if src.dtype == types.uint16:  # bf16 bits: the float32 of the same value has them as its top half
        def from_bf16(src, bits, floats):
            for q in range(len(src)):
                bits[q] = np.uint32(src[q]) << np.uint32(16)
        return from_bf16
    if src.dtype == types.float32:
        def from_f32(src, bits, floats):
            for q in range(len(src)):
                floats[q] = src[q]
        return from_f32
    return None


@part
def scratch(rows):
    """(rows, CHUNK) float32 scratch, with its uint32 view (the views are taken once, of whole arrays:
    a view of a slice taken per chunk defeats vectorisation)."""
    bits = np.empty((rows, CHUNK), np.uint32)
    return bits, bits.view(np.float32)


@part
def delta(bits, d, b, m):
    """d = widen(m) - b over a chunk: one input's task vector, b the chunk's float32 base; `bits` is d's
    scratch as uint32."""
    widen(m, bits, d)
    for q in range(len(d)):
        d[q] = d[q] - b[q]


@part
def chunk_delta(base, model, c, e, bits, rows):
    """rows[1, :n] = model - base over entries [c, e), n = e - c, through rows[0, :n] for the widened base
    (`bits`: the same scratch as uint32); returns the task vector's bits, bits[1, :n]."""
    n = e - c
    widen(base[c:e], bits[0, :n], rows[0, :n])
    delta(bits[1, :n], rows[1, :n], rows[0, :n], model[c:e])
    return bits[1, :n]


@part
def task_vectors(base, models, c, e, bits, vals, base_bits, base_rows):
    """vals[i, :n] = model i's entries [c, e) less the base's, n = e - c, through `bits` (vals as uint32) and
    base_rows[0, :n] (the widened base, through base_bits); returns that widened base."""
    n = e - c
    b = base_rows[0, :n]
    widen(base[c:e], base_bits[0, :n], b)
    for i in range(len(models)):
        delta(bits[i, :n], vals[i, :n], b, models[i][c:e])
    return b


@part
def election_scratch(k):
    """The scratch of a combine with an election over k inputs: their task vectors (and uint32 view), the
    base's row (and view), and the elected sign, the agreeing sum and the divisor."""
    bits, vals = scratch(k)
    base_bits, base_ = scratch(1)
    sign, mixed, divisor = np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32)
    return bits, vals, base_bits, base_, sign, mixed, divisor


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
def combine(base, models, masks, thresholds, scales, weights, by_count, normalize, lambda_, out, lo, hi):
    """out[lo:hi] = base + lambda * (the agreeing sum along the elected sign) / (the agreeing weights, 1
    where none agree, with `normalize`); each input's task vector is its model's entries less the base's."""
    one = np.float32(1.0)
    bits, vals, base_bits, base_, sign_, mixed_, divisor_ = election_scratch(len(models))
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        n = e - c
        sign, mixed, divisor = sign_[:n], mixed_[:n], divisor_[:n]
        b = task_vectors(base, models, c, e, bits, vals, base_bits, base_)
        for i in range(len(models)):
            m, v = masks[i], vals[i, :n]
            weighted(v, v, m[c:e] if len(m) else m, thresholds[i], scales[i])
        elect(sign, vals, by_count)
        agree(mixed, divisor, sign, vals, weights)
        o = out[c:e]
        for q in range(n):
            x = mixed[q] * sign[q]
            if normalize:
                x = x / (one if divisor[q] == 0 else divisor[q])
            if lambda_ != 1:
                x = x * lambda_
            o[q] = x + b[q]


@jit
def deltas(base, model, out):
    """out = model - base, entry by entry, in float32 (the torch path's `m - base` on the widened rows)."""
    out_bits = out.view(np.uint32)
    base_bits, base_ = scratch(1)
    for c in range(0, len(out), CHUNK):
        e = min(c + CHUNK, len(out))
        b = base_[0, : e - c]
        widen(base[c:e], base_bits[0, : e - c], b)
        delta(out_bits[c:e], out[c:e], b, model[c:e])


@jit
def changed(base, model):
    """Whether model - base is anything but +0 somewhere (a -0 or a NaN counts as a change)."""
    bits, rows = scratch(2)
    for c in range(0, len(base), CHUNK):
        d, seen = chunk_delta(base, model, c, min(c + CHUNK, len(base)), bits, rows), np.uint32(0)
        for q in range(len(d)):
            seen |= d[q]
        if seen:
            return True
    return False


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
def l1_sums(base, model, mask, threshold):
    """(sum of |d|, sum of |d| over the survivors) in float64, d = model - base: the survivors are the
    entries where the 0/1 `mask` is 1 (when given) and |d| > threshold (when >= 0). Only the two sums
    are reassociated (so that they vectorise): the order of their adds is LLVM's, fixed for a CPU."""
    bits, rows = scratch(2)
    zero = np.float32(0.0)
    before, after = 0.0, 0.0
    for c in range(0, len(base), CHUNK):
        e = min(c + CHUNK, len(base))
        n = e - c
        chunk_delta(base, model, c, e, bits, rows)
        d = rows[1, :n]
        if len(mask):
            m = mask[c:e]
            for q in range(n):
                x = abs(d[q])
                s = x * np.float32(m[q])
                before += np.float64(x)
                after += np.float64(zero if s <= threshold else s)
        else:
            for q in range(n):
                x = abs(d[q])
                before += np.float64(x)
                after += np.float64(zero if x <= threshold else x)
    return before, after


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
def total(x):
    """The sum of float32 entries in float64 (its adds reassociated so that they vectorise)."""
    out = 0.0
    for q in range(len(x)):
        out += np.float64(x[q])
    return out


@jit
def variance(base, models, out):
    """out = per entry, the population variance across models of their task vectors m - base: Welford's
    update in float64 from the first task vector (the mean starts at it, M2 at 0), divided by the count
    and rounded to float32; for two, ((d0 - d1) / 2)^2 as ((d0 - d1)^2) / 4 in float64. The torch path's
    operations (`sce.welford_variance`) in its order: the same bits."""
    k = len(models)
    bits, rows = scratch(k)
    base_bits, base_ = scratch(1)
    mean_, m2_ = np.empty(CHUNK, np.float64), np.empty(CHUNK, np.float64)
    for c in range(0, len(out), CHUNK):
        e = min(c + CHUNK, len(out))
        n = e - c
        task_vectors(base, models, c, e, bits, rows, base_bits, base_)
        o = out[c:e]
        if k == 2:
            d0, d1 = rows[0, :n], rows[1, :n]
            for q in range(n):
                x = np.float64(d0[q]) - np.float64(d1[q])
                o[q] = np.float32((x * x) / 4.0)
            continue
        mean, m2 = mean_[:n], m2_[:n]
        first = rows[0, :n]
        for q in range(n):
            mean[q] = np.float64(first[q])
            m2[q] = 0.0
        for i in range(1, k):
            d, count = rows[i, :n], np.float64(i + 1)
            for q in range(n):
                x = np.float64(d[q])
                step = x - mean[q]
                mean[q] = mean[q] + step / count
                m2[q] = m2[q] + step * (x - mean[q])
        for q in range(n):
            o[q] = np.float32(m2[q] / k)


@part
def select(v, var, threshold, mask):
    """v = v times SCE's 0/1 selection over a chunk, in place: the `mask` where given, else var > threshold
    where the variance is given (NaN unselected), else every entry (v unchanged)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    if len(mask):
        for q in range(len(v)):
            v[q] = v[q] * np.float32(mask[q])
    elif len(var):
        for q in range(len(v)):
            v[q] = v[q] * (one if var[q] > threshold else zero)


@part
def _part(a, c, e):
    """a[c:e], or a itself where it is empty (an input not given)."""
    return a[c:e] if len(a) else a


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
def sce_energies(base, models, var, threshold, mask):
    """Each model's sum of squares of its selected task vector (`select`), in float64; only the sums
    are reassociated (so that they vectorise)."""
    k = len(models)
    bits, rows = scratch(k)
    base_bits, base_ = scratch(1)
    sums = np.zeros(k, np.float64)
    for c in range(0, len(base), CHUNK):
        e = min(c + CHUNK, len(base))
        n = e - c
        task_vectors(base, models, c, e, bits, rows, base_bits, base_)
        for i in range(k):
            v = rows[i, :n]
            select(v, _part(var, c, e), threshold, _part(mask, c, e))
            s = 0.0
            for q in range(n):
                s += np.float64(v[q] * v[q])
            sums[i] += s
    return sums


@jit
def sce_merge(base, models, var, threshold, mask, weights, out, lo, hi):
    """out[lo:hi] = base + (the weighted sum of the selected task vectors' entries whose sign is the
    elected one) / (the sum of their weights, at least 1e-6): `sce.merge`'s operations in its order
    (sign, times the elected sign, clamped at 0, times the weight), so the same bits."""
    zero, one, floor = np.float32(0.0), np.float32(1.0), np.float32(1e-6)
    k = len(models)
    bits, vals, base_bits, base_, sign_, mixed_, divisor_ = election_scratch(k)
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        n = e - c
        sign, mixed, divisor = sign_[:n], mixed_[:n], divisor_[:n]
        b = task_vectors(base, models, c, e, bits, vals, base_bits, base_)
        for i in range(k):
            select(vals[i, :n], _part(var, c, e), threshold, _part(mask, c, e))
        elect(sign, vals, False)
        mixed[:] = zero
        divisor[:] = zero
        for i in range(k):
            v, w = vals[i, :n], weights[i]
            for q in range(n):
                x = v[q]
                kept = (one if x > 0 else (-one if x < 0 else zero)) * sign[q]  # torch.sign: 0 for 0 and NaN
                kept = zero if kept < 0 else kept  # clamp_(min=0): -0 stays -0, as torch's does
                kept = kept * w
                divisor[q] = divisor[q] + kept
                mixed[q] = mixed[q] + kept * x
        o = out[c:e]
        for q in range(n):
            d = divisor[q]
            o[q] = b[q] + mixed[q] / (floor if d < floor else d)
