"""Gram matrices and weighted sums of a few inputs on CPU, compiled (numba), reading the rows as stored:
the work of SLERP, NuSLERP, Karcher and linear merges.

The torch path converts each bf16 input to a float32 block (and SLERP's to float64) before a product or a
sum; here each chunk of a couple of thousand entries is widened in scratch, so an input is read once per
pass and no block-sized temporary is made but the output. The float32 results are the torch path's bits
(tests/surgery/test_blend.py); the Gram matrix's float64 sums agree with torch's to float64 rounding. Each
function returns None where the kernels cannot take the rows (no numba, `SURGERY_FUSED=0`, another device,
layout or dtype, inputs of mixed dtypes): the caller then takes the torch path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from surgery.merge import fused


def _rows(base: torch.Tensor | None, inputs: Sequence[torch.Tensor]) -> tuple[np.ndarray, tuple] | None:
    """Flat views the kernels read: the base's (empty where none) and the inputs' (all of one dtype)."""
    if not inputs or not fused.available() or not fused.readable([inputs[0] if base is None else base, *inputs]):
        return None
    flat = np.empty(0, np.uint16) if base is None else fused.flat(base)
    return flat, tuple(fused.flat(t) for t in inputs)


def _kernels():
    return fused.compiled("blend_kernel")


def gram(base: torch.Tensor | None, inputs: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """(k, k) float64 sums of x_i * x_j (upper triangle), x_i = input i in float32 (less the base where
    one is given), products and sums in float64."""
    rows = _rows(base, inputs)
    return None if rows is None else torch.from_numpy(_kernels().gram(*rows))


def blend(base: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, c0: float, c1: float,
          divisor: float | None = None) -> torch.Tensor | None:
    """(c0 * u + c1 * v) / divisor (no division where None), plus the base where one is given, u, v = x, y
    (less the base where given), in float32: the torch path's `c0 * u + c1 * v`, its division and its sum
    with the base, with c0, c1 and the divisor rounded to float32 as torch rounds a scalar factor."""
    rows = _rows(base, (x, y))
    if rows is None:
        return None
    base_rows, (u, v) = rows
    kernel, out = _kernels().blend, torch.empty(x.shape, dtype=torch.float32)
    o = out.reshape(-1).numpy()
    s = np.float32(0.0 if divisor is None else divisor)
    fused.each_span(lambda lo, hi: kernel(base_rows, u, v, np.float32(c0), np.float32(c1), s, o, lo, hi), out.numel())
    return out


def weighted_sum(inputs: Sequence[torch.Tensor], weights: Sequence[float],
                 divisor: float | None = None) -> torch.Tensor | None:
    """+0 plus weights[i] * input i, input by input (torch's `out.add_(m, alpha=w)`), then divided by
    `divisor` where given, in float32."""
    rows = _rows(None, inputs)
    if rows is None:
        return None
    kernel, out = _kernels().weighted_sum, torch.empty(inputs[0].shape, dtype=torch.float32)
    o, w = out.reshape(-1).numpy(), np.array(weights, np.float32)
    s = np.float32(0.0 if divisor is None else divisor)
    fused.each_span(lambda lo, hi: kernel(rows[1], w, s, o, lo, hi), out.numel())
    return out
