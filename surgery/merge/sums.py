"""float64 sums of float32 blocks in bounded memory: tensor-wide norms and dot products (SLERP-like
angles, Gram matrices) accumulated block by block.

A float64 copy of a whole block would double its memory, and torch's `sum(dtype=float64)` converts
the whole input first too; here a block is converted SEGMENT elements at a time, so the extra memory
is a few hundred kilobytes whatever the block size.
"""

from __future__ import annotations

import torch

SEGMENT = 1 << 16


def dot64(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum(x * y) over all entries, products and sum in float64: a 0-d float64 tensor."""
    x, y = x.reshape(-1), y.reshape(-1)
    out = torch.zeros((), dtype=torch.float64, device=x.device)
    for a in range(0, x.numel(), SEGMENT):
        out += torch.dot(x[a:a + SEGMENT].double(), y[a:a + SEGMENT].double())
    return out


def column_dot64(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum over the first axis of x * y in float64, shaped like one row (x, y: (r, ...))."""
    out = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
    rows = max(1, SEGMENT // max(1, x[0].numel())) if x.shape[0] else 1
    for a in range(0, x.shape[0], rows):
        out += (x[a:a + rows].double() * y[a:a + rows].double()).sum(0)
    return out
