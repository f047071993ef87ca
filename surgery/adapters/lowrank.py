"""Truncated SVD of a task vector: the best rank-r approximation in Frobenius norm (Eckart-Young),
the smallest rank that keeps a share of the spectral energy, and the two LoRA factors.

LoRA (Hu et al. 2021, arXiv:2106.09685) writes a weight update as B @ A with A (r, in) and B (out, r).
From ΔW = U Σ Vᵀ we keep the top r singular triplets and give each factor √σ:
A = √Σ_r V_rᵀ and B = U_r √Σ_r, so both factors have the same scale (better conditioned for low
precision and for training the adapter further) and B @ A = U_r Σ_r V_rᵀ.
"""

from __future__ import annotations

import torch


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with σ₁² + ... + σᵣ² >= energy · Σσ²; at least 1, at most len(σ)."""
    cum = torch.cumsum(singular_values.double() ** 2, 0)  # (k,)
    if cum[-1] == 0:
        return 1
    r = int(torch.searchsorted(cum, energy * cum[-1]).item()) + 1
    return min(r, len(singular_values))


def spectrum(delta: torch.Tensor) -> torch.Tensor:
    """Singular values of `delta` (out, in) in descending order, (min(out, in),)."""
    return torch.linalg.svdvals(delta.float())


def factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B (out, r), A (r, in) and B @ A the best rank-r approximation of `delta` (out, in)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)  # (out, k), (k,), (k, in)
    root = s[:rank].sqrt()  # (r,)
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def relative_error(delta: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    """||delta − B @ A||_F / ||delta||_F, with the factors as stored (after any cast)."""
    delta = delta.float()
    norm = torch.linalg.matrix_norm(delta).item()
    residual = torch.linalg.matrix_norm(delta - b.float() @ a.float()).item()
    return residual / norm if norm else 0.0
