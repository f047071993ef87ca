"""LoRA folding: W' = W + sum_i scale_i * B_i @ A_i, on rows [r0, r1) of the stored weight.

LoRA: Hu et al. 2021, arXiv:2106.09685; scale = alpha / r, or alpha / sqrt(r) with rsLoRA
(Kalajdzievski 2023, arXiv:2312.03732). A weight stored (in, out) (GPT-2's Conv1D with
`fan_in_fan_out`, and embeddings, whose delta is A^T B^T) takes the transposed product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Factor = tuple[torch.Tensor, torch.Tensor, float]  # (A (r, in), B (out, r), scale), float32


def _factors(A: torch.Tensor, B: torch.Tensor, rows: tuple[int, int],
             transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two matrices whose product is rows [r0, r1) of B @ A, or of (B @ A)^T when stored (in, out)."""
    r0, r1 = rows
    if transposed:
        return A[:, r0:r1].T, B.T  # (r1 - r0, r) @ (r, out)
    return B[r0:r1], A  # (r1 - r0, r) @ (r, in)


def delta_rows(A: torch.Tensor, B: torch.Tensor, rows: tuple[int, int], transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of B @ A, or of (B @ A)^T when the weight is stored (in, out)."""
    left, right = _factors(A, B, rows, transposed)
    return left @ right


def fold(w: torch.Tensor, rows: tuple[int, int], factors: Sequence[Factor], transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of the weight with every adapter of `factors` added (weights already in each scale)."""
    out = w.to(torch.float32, copy=True)  # (r1 - r0, cols): the one block-sized buffer; the caller's is untouched
    for A, B, scale in factors:
        left, right = _factors(A, B, rows, transposed)
        out.addmm_(left, right, alpha=scale)  # no delta-sized temporary
    return out


def fold_bias(bias: torch.Tensor, lora_bias: torch.Tensor, scale: float) -> torch.Tensor:
    """A LoRA with `lora_bias` also adds scale * B's bias to the base bias (out,)."""
    return bias.float() + scale * lora_bias.float()
