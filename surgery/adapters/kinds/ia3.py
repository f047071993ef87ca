"""(IA)^3 folding (Liu et al. 2022, arXiv:2205.05638): a learned vector l rescales a weight's
outputs (attention keys and values: W' = diag(l) W) or, for `feedforward_modules`, its inputs
(W' = W diag(l)); an output-scaled layer's bias is scaled with it, as PEFT merges it.
"""

from __future__ import annotations

import torch


def fold(w: torch.Tensor, rows: tuple[int, int], l: torch.Tensor, feedforward: bool, transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of the rescaled weight; `w` stored (out, in), or (in, out) when `transposed`."""
    r0, r1 = rows
    vector = l.float().reshape(-1)  # (out,) or (in,)
    scales_rows = feedforward == transposed  # outputs are rows of (out, in); inputs are rows of (in, out)
    if scales_rows:
        return w.float() * vector[r0:r1].unsqueeze(1)  # (r1 - r0, 1)
    return w.float() * vector.unsqueeze(0)  # (1, cols)


def fold_bias(bias: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """The bias (out,) of an output-scaled layer, scaled with its outputs."""
    return bias.float() * l.float().reshape(-1)
