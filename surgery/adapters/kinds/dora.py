"""DoRA folding: W' = m * V / ||V||, with V = W + scale * B @ A (Liu et al. 2024, arXiv:2402.09353).

The norm is taken per output feature over the inputs, as PEFT does: over each row of an (out, in)
weight, and over each column of a weight stored (in, out) (Conv1D with `fan_in_fan_out`, and
embeddings, where PEFT normalises every embedding dimension over the vocabulary). A row block holds
whole rows, so the first case folds block by block; the second needs the column norms of the whole
V first, which `column_sumsq` accumulates over blocks (a vector, not the weight).
"""

from __future__ import annotations

import torch

from surgery.adapters.kinds.lora import delta_rows


def direction(w: torch.Tensor, rows: tuple[int, int], A: torch.Tensor, B: torch.Tensor, scale: float,
              transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of V = W + scale * B @ A (transposed when stored (in, out))."""
    return w.float() + scale * delta_rows(A, B, rows, transposed)  # (r1 - r0, cols)


def column_sumsq(w: torch.Tensor, rows: tuple[int, int], A: torch.Tensor, B: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """Sum over rows [r0, r1) of V^2 for a weight stored (in, out): the blocks add up to ||V||^2 per column."""
    return direction(w, rows, A, B, scale, True).square().sum(dim=0)  # (out,)


def fold(w: torch.Tensor, rows: tuple[int, int], A: torch.Tensor, B: torch.Tensor, scale: float,
         magnitude: torch.Tensor, transposed: bool, column_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [r0, r1) of m * V / ||V||; a weight stored (in, out) needs `column_norm` (out,) of all of V."""
    v = direction(w, rows, A, B, scale, transposed)
    if transposed:
        return v * (magnitude.float() / column_norm).unsqueeze(0)  # (1, out) scales every column
    r0, r1 = rows
    norm = torch.linalg.norm(v, dim=1)  # (r1 - r0,) one per output feature
    return v * (magnitude.float()[r0:r1] / norm).unsqueeze(1)
