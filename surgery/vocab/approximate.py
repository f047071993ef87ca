"""Embedding rows for tokens a model never had, one function per method (the registry APPROXIMATIONS).

- `omp` (mergekit-tokensurgeon's default; Goddard and Fernandes Neto, 2025, "Training-Free Tokenizer
  Transplantation via Orthogonal Matching Pursuit"): in the donor's embedding space, express the new
  token's row as a sparse combination of k rows of tokens both models share, chosen greedily by
  orthogonal matching pursuit; apply the same coefficients to the model's rows of those tokens.
- `subword`: the mean of the model's rows of the pieces its own tokenizer cuts the token's text into
  (the usual baseline; mergekit's `subword` method with `mean`). A token it cannot cut gets zeros.
- `mean`: the mean of all the model's rows (a token-blind baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Context:
    model_rows: torch.Tensor             # (V_model, H) float32: the model's matrix (input or output embeddings)
    donor_rows: torch.Tensor | None      # (V_donor, D) float32: the donor's matrix of the same side, if it has weights
    shared: list[tuple[int, int]]        # (donor id, model id) of every shared token, by donor id
    pieces: Callable[[int], list[int]]   # donor id -> the model's ids of that token's text, re-tokenised
    k: int


def omp(targets: torch.Tensor, atoms: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal matching pursuit: for each target (B, D), k atoms of (N, D) picked one at a time by the
    largest |residual . atom| (atoms not normalised, as mergekit does), the coefficients refitted by
    least squares on the atoms picked so far. Returns indices (B, k) and coefficients (B, k)."""
    t64, a64 = targets.double(), atoms.double()
    b = torch.arange(len(targets))
    chosen = torch.zeros(len(targets), k, dtype=torch.long)
    taken = torch.zeros(len(targets), len(atoms), dtype=torch.bool)
    residual, coeff = t64.clone(), t64.new_zeros(len(targets), 0)
    for step in range(k):
        scores = (residual @ a64.T).abs().masked_fill(taken, -1.0)  # (B, N)
        pick = scores.argmax(1)
        chosen[:, step], taken[b, pick] = pick, True
        picked = a64[chosen[:, : step + 1]]  # (B, step + 1, D)
        coeff = torch.linalg.lstsq(picked.transpose(1, 2), t64.unsqueeze(-1)).solution.squeeze(-1)  # (B, step + 1)
        residual = t64 - (coeff.unsqueeze(1) @ picked).squeeze(1)
    return chosen, coeff.float()


def omp_rows(ctx: Context, new: list[int], batch: int = 512) -> torch.Tensor:
    donor_ids = torch.tensor([d for d, _ in ctx.shared])
    model_ids = torch.tensor([m for _, m in ctx.shared])
    atoms, model_atoms = ctx.donor_rows[donor_ids], ctx.model_rows[model_ids]  # (N, D), (N, H)
    out = []
    for start in range(0, len(new), batch):
        targets = ctx.donor_rows[torch.tensor(new[start:start + batch])]  # (B, D)
        idx, coeff = omp(targets, atoms, ctx.k)
        out.append((coeff.unsqueeze(1) @ model_atoms[idx]).squeeze(1))  # (B, H)
    return torch.cat(out) if out else ctx.model_rows.new_zeros(0, ctx.model_rows.shape[1])


def subword_rows(ctx: Context, new: list[int]) -> torch.Tensor:
    rows = ctx.model_rows.new_zeros(len(new), ctx.model_rows.shape[1])
    for i, donor_id in enumerate(new):
        ids = [p for p in ctx.pieces(donor_id) if p < len(ctx.model_rows)]
        if ids:
            rows[i] = ctx.model_rows[ids].mean(0)
    return rows


def mean_rows(ctx: Context, new: list[int]) -> torch.Tensor:
    return ctx.model_rows.mean(0, keepdim=True).expand(len(new), -1).clone()


@dataclass(frozen=True)
class Approximation:
    rows: Callable[[Context, list[int]], torch.Tensor]  # (context, new donor ids) -> (len(new), H)
    needs_donor_weights: bool


APPROXIMATIONS: dict[str, Approximation] = {
    "omp": Approximation(omp_rows, True),
    "subword": Approximation(subword_rows, False),
    "mean": Approximation(mean_rows, False),
}
