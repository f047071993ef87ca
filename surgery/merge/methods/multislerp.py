"""Multi-SLERP: barycentric interpolation of any number of models (or, with a base_model, of their
task vectors) on the hypersphere: the weighted mean of the unit vectors, renormalised, scaled by the
weighted mean of the norms (Goddard 2024, https://goddard.blog/posts/multislerp-wow-what-a-cool-idea).

mergekit projects the unit vectors onto the tangent space at their weighted mean and maps the
weighted tangent sum back; that sum is zero (the mean's own direction is removed from each unit
vector in proportion to its weight), so the result is the normalised weighted mean of the unit
vectors, which is what is computed here. The mean is a combination of the inputs, so its
coefficients follow from their Gram matrix: one statistics stage (float64 dot products summed over
blocks), then a weighted sum per block."""

from itertools import combinations_with_replacement

import torch
from pydantic import Field

from surgery.errors import NumericsError
from surgery.merge.methods.method import Block, Method, Params, Stage, Stats
from surgery.merge.sums import dot64


class MultislerpShared(Params):
    normalize_weights: bool = Field(True, description="divide the weights by their sum")
    eps: float = Field(1e-8, gt=0, description="added to each norm before normalising")


class MultislerpWeight(Params):
    weight: float | None = Field(None, description="this model's weight on the sphere")


def _vectors(block: Block) -> list[torch.Tensor]:
    if block.base is None:
        return list(block.models)
    return block.cached("tvs", lambda: [m - block.base for m in block.models])


def gram(block: Block, stats: Stats) -> Stats:
    x = _vectors(block)
    return {f"g{i}.{j}": dot64(x[i], x[j]) for i, j in combinations_with_replacement(range(len(x)), 2)}


def weights(block: Block) -> list[float]:
    w = [p.weight for p in block.per_model]
    return [v / sum(w) for v in w] if block.shared.normalize_weights else w


def coefficients(block: Block, stats: Stats) -> list[float] | None:
    """c with output = sum_i c_i v_i (v the models or task vectors); None for the two-input linear fallback."""
    n, w, eps = len(block.models), weights(block), block.shared.eps
    g = [[float(stats[f"g{min(i, j)}.{max(i, j)}"]) for j in range(n)] for i in range(n)]
    norms = [g[i][i] ** 0.5 for i in range(n)]
    # the weighted mean of unit vectors is sum unit_i v_i; a zero vector's unit vector is zero (0 / eps), and its
    # coefficient is kept at 0 rather than w / eps, which overflows float32 for a tiny eps
    unit = [w[i] / (norms[i] + eps) if norms[i] > 0 else 0.0 for i in range(n)]
    mean_norm = max(0.0, sum(unit[i] * unit[j] * g[i][j] for i in range(n) for j in range(n))) ** 0.5
    scale = sum(nm * wi for nm, wi in zip(norms, w))  # weighted mean of the norms
    if mean_norm >= eps:
        return [u * scale / mean_norm for u in unit]
    if n == 2:
        return None
    if all(nm == 0 for nm in norms):
        return [0.0] * n  # nothing to interpolate: every vector is zero
    raise NumericsError(f"multislerp: tensor {block.name!r}: the weighted mean of the inputs' directions is zero "
                        "(opposite inputs with weights that balance out); change the weights")


def merge(block: Block, stats: Stats) -> torch.Tensor:
    if len(block.models) == 1:
        return block.models[0].clone()  # as mergekit: the one model itself, base or not
    vectors = _vectors(block)
    c = coefficients(block, stats)
    if c is None:  # two inputs whose directions cancel: the weighted sum, as mergekit falls back to
        w = weights(block)
        out = vectors[0] * w[0] + vectors[1] * w[1]
    else:
        out = torch.zeros_like(vectors[0])
        for ci, v in zip(c, vectors):
            out.add_(v, alpha=ci)
    return out if block.base is None else out.add_(block.base)


def check(shared: MultislerpShared, models: tuple) -> str | None:
    if shared.normalize_weights and len(models) > 1 and abs(sum(p.weight for p in models)) < 1e-12:
        return "the weights sum to zero, so normalize_weights cannot divide by their sum; change a weight"
    return None


METHOD = Method("multislerp", merge, "spherical weighted mean of any number of models or task vectors",
                "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea", shared=MultislerpShared,
                per_model=MultislerpWeight, base="optional", check=check,
                stages=(Stage(gram, when=lambda shared, models: len(models) > 1),),
                required=("weight",), work=3)
