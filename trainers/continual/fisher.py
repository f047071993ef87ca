"""The maths of elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic
forgetting in neural networks", arXiv:1612.00796) and of its online form (Schwarz et al. 2018,
"Progress & Compress", arXiv:1805.06370), as pure functions of tensors.

- Diagonal Fisher of a stage, at the stage's final weights θ*:
      F_i = (1/N) Σ_n (∂ log p(y_n | x_n; θ*) / ∂θ_i)²
  the mean over N rows of the squared gradient of each row's log-likelihood (the sum of log p over
  the row's trained tokens). This is the empirical Fisher (the rows' own answers, not answers sampled
  from the model). It is computed in one streaming pass: one row's gradient at a time, only the
  running sum of squares held (the size of the trainable weights, whatever N).
- Penalty: (λ/2) Σ_terms Σ_i F_i (θ_i − θ*_i)², whose gradient is λ F_i (θ_i − θ*_i); each term is an
  `Anchor` (a Fisher and the weights it was taken at).
- EWC keeps one anchor per earlier stage; online EWC keeps one, F̃ ← γ F̃ + F_k at the weights of the
  latest stage (`decayed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

Tensors = dict[str, torch.Tensor]
LogLikelihood = Callable[[torch.nn.Module, object], torch.Tensor]  # (model, one example) -> a scalar


@dataclass(frozen=True)
class Anchor:
    """One penalty term: a diagonal Fisher and the weights θ* it was taken at, by parameter name."""

    fisher: Tensors
    weights: Tensors


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def diagonal_fisher(model: torch.nn.Module, examples: Iterable, loglik: LogLikelihood, total: int | None = None,
                    quiet: bool = True) -> Tensors:
    """F_i = mean over examples of (∂ loglik / ∂θ_i)², for every trainable parameter; the model's
    gradients are left cleared."""
    params = trainable(model)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    for example in tqdm(examples, total=total, desc="fisher", disable=quiet, dynamic_ncols=True):
        model.zero_grad(set_to_none=True)
        loglik(model, example).backward()
        for name, p in params.items():
            if p.grad is not None:  # a parameter the example does not reach has gradient 0
                sums[name] += p.grad.detach().float() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("a Fisher needs at least one example")
    return {n: s / count for n, s in sums.items()}


def penalty(named: Mapping[str, torch.Tensor], anchors: Sequence[Anchor], lam: float) -> torch.Tensor:
    """(λ/2) Σ_anchors Σ_i F_i (θ_i − θ*_i)² over the parameters the anchors name; `named` maps names to
    the current parameters θ."""
    total = None
    for anchor in anchors:
        for name, fisher in anchor.fisher.items():
            theta = named[name]
            term = (fisher * (theta - anchor.weights[name]) ** 2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def decayed(fishers: Sequence[Tensors], gamma: float) -> Tensors:
    """Online EWC's F̃ after stages 0..k-1: Σ_j γ^(k-1-j) F_j (F̃ ← γ F̃ + F_j, stage by stage)."""
    out: Tensors = {}
    for fisher in fishers:
        out = {n: gamma * out[n] + f if n in out else f.clone() for n, f in fisher.items()}
    return out


def on_device(anchor: Anchor, device: torch.device) -> Anchor:
    return Anchor({n: t.to(device) for n, t in anchor.fisher.items()},
                  {n: t.to(device) for n, t in anchor.weights.items()})
