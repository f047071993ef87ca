"""VeRA folding (Kopiczko et al. 2024, arXiv:2310.11454): one pair of frozen random projections
A (r, in_max) and B (out_max, r) shared by every layer, sliced to each layer's shape, and two
trained vectors per layer: W' = W + (lambda_b * B[:out]) @ (lambda_d * A[:, :in]).

When the adapter was saved without its projections, they are regenerated as PEFT draws them: a CPU
generator seeded with `projection_prng_key` fills A then B with Kaiming-uniform values,
U(-sqrt(6 / fan_in), sqrt(6 / fan_in)), fan_in being the second dimension of each.
"""

from __future__ import annotations

import math

import torch


def projections(key: int, r: int, out_max: int, in_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared A (r, in_max) and B (out_max, r) PEFT derives from `key`."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    A = torch.empty(r, in_max).uniform_(-math.sqrt(6 / in_max), math.sqrt(6 / in_max), generator=generator)
    B = torch.empty(out_max, r).uniform_(-math.sqrt(6 / r), math.sqrt(6 / r), generator=generator)
    return A, B


def fold(w: torch.Tensor, rows: tuple[int, int], A: torch.Tensor, B: torch.Tensor, lambda_b: torch.Tensor,
         lambda_d: torch.Tensor, transposed: bool, scale: float = 1.0) -> torch.Tensor:
    """Rows [r0, r1) of W + scale * (lambda_b B) @ (lambda_d A), sliced to W; stored (in, out) when `transposed`."""
    r0, r1 = rows
    down = lambda_d.float().unsqueeze(1) * A.float()  # (r, in_max)
    if transposed:  # w (r1 - r0, out): its rows are inputs
        up = lambda_b.float().unsqueeze(1) * B.float()[: w.shape[1]]  # (out, r)
        return w.float() + scale * (down[:, r0:r1].T @ up.T)  # (r1 - r0, out)
    up = lambda_b.float()[r0:r1].unsqueeze(1) * B.float()[r0:r1]  # (r1 - r0, r)
    return w.float() + scale * (up @ down[:, : w.shape[1]])  # (r1 - r0, in)
