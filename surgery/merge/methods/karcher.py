"""Karcher mean: the point on the unit hypersphere that minimises the summed squared geodesic
distances to the inputs' directions, found by Riemannian gradient steps, scaled by the mean norm
(Karcher 1977, https://doi.org/10.1002/cpa.3160300502; for merging, https://arxiv.org/abs/2603.04972).
Every input counts equally; a base_model, if given, is one more input, as mergekit merges it. Inputs
whose norm is at most `tol` take no part in the direction; when that is every input, the result is
their plain mean (mergekit writes zeros there: the two differ by less than `tol`).

Every iterate is a combination of the inputs' unit vectors, so the iteration runs on its n
coefficients, with every dot product and norm taken from the inputs' Gram matrix: one statistics
stage (float64, summed over blocks), then a weighted sum per block. mergekit iterates on whole
float32 tensors; the steps, stopping tests and fallbacks here are the same."""

import math
from itertools import combinations_with_replacement

import torch
from pydantic import Field

from surgery.merge import blend
from surgery.merge.methods.method import Block, Method, Params, Stage, Stats
from surgery.merge.sums import dot64

Vector = list[float]


class KarcherShared(Params):
    max_iter: int = Field(10, ge=0, description="most gradient steps")
    tol: float = Field(1e-5, gt=0, description="stop when the step is shorter; inputs with a smaller norm are left out")


def gram(block: Block, stats: Stats) -> Stats:
    pairs = list(combinations_with_replacement(range(len(block.stored_models)), 2))
    g = blend.gram(None, block.stored_models)  # compiled from the stored rows
    if g is not None:
        return {f"g{i}.{j}": g[i, j] for i, j in pairs}
    x = block.models
    return {f"g{i}.{j}": dot64(x[i], x[j]) for i, j in pairs}


def _dot(u: Vector, v: Vector, g: list[Vector]) -> float:
    """<sum u_i x_i, sum v_j x_j> for unit inputs x with Gram matrix g."""
    return sum(u[i] * v[j] * g[i][j] for i in range(len(u)) for j in range(len(v)) if u[i] and v[j])


def _norm(u: Vector, g: list[Vector]) -> float:
    return math.sqrt(max(0.0, _dot(u, u, g)))


def karcher(g: list[Vector], alphas: Vector, max_iter: int, tol: float) -> Vector:
    """Coefficients of the Karcher mean over unit inputs (Gram matrix g), inputs with alpha 0 left out."""
    n = len(alphas)
    total = sum(alphas)
    a = [x / total for x in alphas]
    mean_norm = _norm(a, g)
    if mean_norm < tol:  # the weighted mean of the directions vanishes: start from the first kept input
        first = next(i for i, x in enumerate(a) if x)
        mean = [float(i == first) for i in range(n)]
    else:
        mean = [x / mean_norm for x in a]
    for _ in range(max_iter):
        step = [0.0] * n
        for i in range(n):
            if not a[i]:
                continue
            dot = max(-1.0, min(1.0, sum(mean[j] * g[i][j] for j in range(n))))
            theta = math.acos(dot)
            if theta < tol:
                continue
            f = a[i] * theta / math.sin(theta)  # the log map's length over the chord's
            step = [s - f * dot * m for s, m in zip(step, mean)]
            step[i] += f
        length = _norm(step, g)
        if length < tol:
            break
        mean = [math.cos(length) * m + math.sin(length) * s / length for m, s in zip(mean, step)]
        unit = _norm(mean, g)
        if unit > tol:
            mean = [m / unit for m in mean]
    return mean


def coefficients(block: Block, stats: Stats) -> Vector:
    """c with output = sum_i c_i m_i."""
    n, p = len(block.stored_models), block.shared
    raw = [[float(stats[f"g{min(i, j)}.{max(i, j)}"]) for j in range(n)] for i in range(n)]
    norms = [math.sqrt(raw[i][i]) for i in range(n)]
    valid = [nm > p.tol for nm in norms]
    if not any(valid):
        return [1.0 / n] * n  # every input is (nearly) zero: their mean (mergekit writes zeros)
    unit_gram = [[raw[i][j] / (norms[i] * norms[j]) if valid[i] and valid[j] else 0.0 for j in range(n)]
                 for i in range(n)]
    mean = karcher(unit_gram, [1.0 / n if v else 0.0 for v in valid], p.max_iter, p.tol)
    scale = sum(nm / n for nm in norms)  # mean norm over every input, the left-out ones too
    return [scale * m / nm if v else 0.0 for m, nm, v in zip(mean, norms, valid)]


def merge(block: Block, stats: Stats) -> torch.Tensor:
    if len(block.stored_models) == 1:
        return block.models[0].clone()
    weights = coefficients(block, stats)
    out = blend.weighted_sum(block.stored_models, weights)
    if out is not None:
        return out
    out = torch.zeros_like(block.models[0])
    for c, m in zip(weights, block.models):
        out.add_(m, alpha=c)
    return out


METHOD = Method("karcher", merge, "Riemannian (Karcher) mean of the models' directions, scaled by their mean norm",
                "https://arxiv.org/abs/2603.04972", shared=KarcherShared, base="merged", work=2,
                stages=(Stage(gram, when=lambda shared, models: len(models) > 1),))
