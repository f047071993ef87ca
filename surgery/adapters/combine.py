"""Several LoRA modules of one base layer combined into one LoRA module, in adapter space.

Each input i brings A_i (r_i, in), B_i (out, r_i), its scale s_i (alpha/r, or alpha/sqrt(r) with
rsLoRA) and the user's weight w_i; its delta is s_i B_i @ A_i. Two families, as PEFT's
`add_weighted_adapter` names them:

  cat   A = [w_1 s_1 A_1; ...; w_n s_n A_n], B = [B_1 ... B_n]: B @ A = sum_i w_i s_i B_i @ A_i
        exactly, at rank sum_i r_i.
  *_svd the task-vector merge of the deltas d_i = s_i B_i @ A_i (our own `task_arithmetic`, `ties`,
        `dare_linear` or `dare_ties` on a zero base, so the same code as `surgery merge`), then the
        best rank-R approximation (truncated SVD, sqrt(sigma) in each factor, `surgery.adapters.lowrank`).

Factors come out with scale 1: the caller writes lora_alpha = r (and no rsLoRA) for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.adapters.lowrank import factors
from surgery.merge.methods import REGISTRY

COMBINATIONS = ("cat", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd")
SPARSE = ("ties_svd", "dare_linear_svd", "dare_ties_svd")  # those that take a density
RANDOM = ("dare_linear_svd", "dare_ties_svd")
# combination -> (our merge method on the deltas, its shared parameters). TIES variants divide by the
# weights that agree with the elected sign (a disjoint mean, as the TIES paper and PEFT do).
METHODS = {
    "svd": ("task_arithmetic", {}),
    "ties_svd": ("ties", {"normalize": True}),
    "dare_linear_svd": ("dare_linear", {}),
    "dare_ties_svd": ("dare_ties", {"normalize": True}),
}


@dataclass(frozen=True)
class Term:
    """One input's LoRA on one module, float32."""

    A: torch.Tensor     # (r, in)
    B: torch.Tensor     # (out, r)
    scale: float        # PEFT's scaling of this adapter on this module
    weight: float       # the user's weight of this adapter


def cat(terms: list[Term]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) whose product is exactly sum_i w_i s_i B_i @ A_i; rank sum_i r_i."""
    A = torch.cat([t.A * (t.weight * t.scale) for t in terms], dim=0)  # (sum r, in)
    B = torch.cat([t.B for t in terms], dim=1)  # (out, sum r)
    return A, B


def combined_delta(terms: list[Term], combination: str, density: float | None, seed: int, name: str) -> torch.Tensor:
    """The merged delta (out, in) before re-factorisation. `name` seeds DARE's drops, so one module's
    result depends on (seed, name) alone, never on the order modules are merged in."""
    method_name, shared = METHODS[combination]
    method = REGISTRY[method_name]
    deltas = [t.B @ t.A * t.scale for t in terms]  # each (out, in)
    sparse = {"density": density} if combination in SPARSE else {}
    per_model = [method.per_model(weight=t.weight, **sparse) for t in terms]
    zero = torch.zeros_like(deltas[0])  # the deltas are task vectors already: a zero base
    return method.merge_tensors(zero, deltas, per_model, method.shared(**shared), seed=seed, name=name)


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, in), B (out, rank)): the best rank-`rank` approximation of `delta` (out, in)."""
    B, A = factors(delta, rank)
    return A, B

