"""SLERP between the base and one other model: interpolate along the great circle through the two
tensors, seen as vectors; nearly colinear pairs fall back to linear interpolation. t=0 gives the base.
Tensor-wide norms and the dot product are one statistics stage, so blocks of rows suffice."""

import math

import torch
from pydantic import BaseModel, Field

from surgery.merge import blend
from surgery.merge.methods.method import Block, Fallback, Method, Params, Stage, Stats

DOT_THRESHOLD = 0.9995
EPS = 1e-8


class SlerpShared(Params):
    t: float | None = Field(None, ge=0, le=1, description="interpolation factor: 0 is the base, 1 the other model")


def norms(block: Block, stats: Stats) -> Stats:
    g = blend.gram(None, (block.stored_base, block.stored_models[0]))  # compiled from the stored rows
    if g is not None:
        return {"aa": g[0, 0], "bb": g[1, 1], "ab": g[0, 1]}
    a, b = block.base.double(), block.models[0].double()
    return {"aa": (a * a).sum(), "bb": (b * b).sum(), "ab": (a * b).sum()}


def cosine(stats: Stats) -> float:
    na, nb = math.sqrt(float(stats["aa"])), math.sqrt(float(stats["bb"]))
    na, nb = (na if na > EPS else 1.0), (nb if nb > EPS else 1.0)
    return max(-1.0, min(1.0, float(stats["ab"]) / (na * nb)))


def colinear(shared: BaseModel, stats: Stats) -> bool:
    """The two tensors are too close to parallel for the great circle through them to be well defined."""
    return abs(cosine(stats)) > DOT_THRESHOLD


def coefficients(t: float, stats: Stats) -> tuple[float, float]:
    if colinear(None, stats):
        return 1 - t, t
    theta = math.acos(cosine(stats))
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def merge(block: Block, stats: Stats) -> torch.Tensor:
    ca, cb = coefficients(block.shared.t, stats)
    out = blend.blend(None, block.stored_base, block.stored_models[0], ca, cb)
    return out if out is not None else ca * block.base + cb * block.models[0]


METHOD = Method("slerp", merge, "spherical interpolation of two models", "https://en.wikipedia.org/wiki/Slerp",
                shared=SlerpShared, min_models=1, max_models=1, stages=(Stage(norms),), required=("t",), work=2,
                fallback=Fallback("linear interpolation", f"their two inputs are nearly colinear, |cos| > "
                                  f"{DOT_THRESHOLD}", colinear))
