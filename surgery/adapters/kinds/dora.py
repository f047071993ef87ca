"""DoRA folding: W' = m * V / ||V||, with V = W + scale * B @ A (Liu et al. 2024, arXiv:2402.09353).

A DoRA adapter is a LoRA adapter with `use_dora` (PEFT's LoraConfig), so `lora` reads its config and
maps its tensors (a `dora` change where a module has a magnitude vector); this kind folds them.

The norm is taken per output feature over the inputs, as PEFT does: over each row of an (out, in)
weight, and over each column of a weight stored (in, out) (Conv1D with `fan_in_fan_out`, and
embeddings, where PEFT normalises every embedding dimension over the vocabulary). A row block holds
whole rows, so the first case folds block by block; the second needs the column norms of the whole
V first, which `column_norm` sums over blocks (a vector, not the weight).
"""

from __future__ import annotations

import torch

from surgery.adapters.kinds.kind import Kind, Step, one_at_a_time
from surgery.adapters.kinds.lora import delta_rows
from surgery.io.format import row_numel

NORM_BLOCK = 16 * 1024**2  # float32 bytes per block of the column-norm pass


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


def column_norm(step: Step) -> torch.Tensor:
    """||V|| per column of a weight stored (in, out), V being the weight this adapter sees plus its delta;
    one pass over the weight in blocks, kept as an (out,) vector."""
    def make() -> torch.Tensor:
        shape = step.shape
        rows_per_block = max(1, NORM_BLOCK // (4 * max(row_numel(shape), 1)))
        total = torch.zeros(shape[1])
        for r0 in range(0, shape[0], rows_per_block):
            rows = (r0, min(r0 + rows_per_block, shape[0]))
            total += column_sumsq(step.before(rows), rows, step["A"], step["B"], step.delta.scale)
        return total.sqrt()
    return step.kept(f"norm:{step.name}", make)


def _fold_step(w: torch.Tensor, rows: tuple[int, int], step: Step) -> torch.Tensor:
    d = step.delta
    norm = column_norm(step) if d.transposed else None
    return fold(w, rows, step["A"], step["B"], d.scale, step["magnitude"], d.transposed, norm)


KIND = Kind("dora", "DoRA", {"dora": one_at_a_time(_fold_step)}, weighted=False)
