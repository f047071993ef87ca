"""The kernels of `blend`, compiled by numba: Gram matrices and weighted sums of a few inputs (SLERP,
NuSLERP, Karcher, linear), reading the rows as stored.

Imported only where numba is installed (`fused.compiled`). Every float32 operation is the torch path's, in
its order, so the two give the same bits; `add_(m, alpha=c)` is one fused multiply-add per entry on a CPU
that has them (torch's vectorised add), so `weighted_sum` contracts its products into its sums (the one
flag it is compiled with). The Gram matrix's float64 products of float32 values are exact; only their sums
add in another order than torch's (reassociated, so that they vectorise): they agree to float64 rounding.
"""

from __future__ import annotations

import numba
import numpy as np

from surgery.merge.fused_kernel import CHUNK, scratch, task_vectors, widen

jit = numba.njit(cache=True, nogil=True, boundscheck=False)
part = numba.njit(inline="always")


@part
def vectors(base, models, c, e, bits, rows, base_bits, base_rows):
    """rows[i, :e - c] = input i's entries [c, e) in float32, less the base's where one is given (its float32
    entries, returned, in base_rows[0])."""
    if len(base):
        return task_vectors(base, models, c, e, bits, rows, base_bits, base_rows)
    for i in range(len(models)):
        widen(models[i][c:e], bits[i, :e - c], rows[i, :e - c])
    return base_rows[0, :e - c]


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
def gram(base, models):
    """(k, k) float64: the sums of x_i * x_j over the entries (upper triangle, the rest 0), x_i input i's
    float32 entries (less the base's where one is given) widened to float64."""
    k = len(models)
    bits, rows = scratch(k)
    base_bits, base_ = scratch(1)
    out = np.zeros((k, k), np.float64)
    for c in range(0, len(models[0]), CHUNK):
        e = min(c + CHUNK, len(models[0]))
        n = e - c
        vectors(base, models, c, e, bits, rows, base_bits, base_)
        for i in range(k):
            for j in range(i, k):
                x, y, s = rows[i, :n], rows[j, :n], 0.0
                for q in range(n):
                    s += np.float64(x[q]) * np.float64(y[q])
                out[i, j] += s
    return out


@jit
def blend(base, x, y, c0, c1, s, out, lo, hi):
    """out[lo:hi] = (c0 * u + c1 * v) / s (no division where s is 0), plus the base where one is given:
    u, v = x, y, less the base where it is given."""
    bits, rows = scratch(2)
    base_bits, base_ = scratch(1)
    models = (x, y)
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        n = e - c
        b = vectors(base, models, c, e, bits, rows, base_bits, base_)
        u, v, o = rows[0, :n], rows[1, :n], out[c:e]
        for q in range(n):
            o[q] = c0 * u[q] + c1 * v[q]
        if s != 0:
            for q in range(n):
                o[q] = o[q] / s
        if len(base):
            for q in range(n):
                o[q] = b[q] + o[q]


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"contract"})
def weighted_sum(models, weights, divisor, out, lo, hi):
    """out[lo:hi] = +0, plus weights[i] * input i for each input in turn (a fused multiply-add each), then
    divided by `divisor` where it is not 0."""
    k = len(models)
    bits, rows = scratch(k + 1)
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        n = e - c
        o = out[c:e]
        o[:] = np.float32(0.0)
        for i in range(k):
            widen(models[i][c:e], bits[i, :n], rows[i, :n])
            x, w = rows[i, :n], weights[i]
            for q in range(n):
                o[q] = o[q] + w * x[q]
        if divisor != 0:
            for q in range(n):
                o[q] = o[q] / divisor
