"""NuSLERP: spherical interpolation of two models (or, with a base_model, of their task vectors) at
t = w2 / (w1 + w2), over the whole tensor seen as one vector (`nuslerp_flatten`, the default), or
per row, or per column (`nuslerp_row_wise`); nearly colinear pairs fall back to linear
interpolation (mergekit's NuSLERP, https://github.com/arcee-ai/mergekit; SLERP: Shoemake 1985,
https://doi.org/10.1145/325165.325242). Weights summing to zero give t = 0.5, as in mergekit.

Per-row vectors lie within a block of rows. Whole-tensor and per-column norms and dot products are
one statistics stage (float64 sums over the blocks; per column they have a row's size)."""

import torch
from pydantic import Field

from surgery.merge import blend
from surgery.merge.methods.method import Block, Method, Params, Stage, Stats
from surgery.merge.sums import column_dot64, dot64

EPS = 1e-8       # colinear when 1 - cos^2 <= EPS^2
NORM_FLOOR = 1e-7  # a vector's norm is clamped to this before normalising (a zero vector has cos 0)


class NuslerpShared(Params):
    nuslerp_flatten: bool = Field(True, description="one angle for the whole tensor (else per row or per column)")
    nuslerp_row_wise: bool = Field(False, description="without flatten: interpolate columns (vectors along the "
                                   "first axis) instead of rows")


class NuslerpWeight(Params):
    weight: float | None = Field(None, description="this model's share: t = w2 / (w1 + w2)")


def _pair(block: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """The two vectors interpolated: the models, or their task vectors when there is a base."""
    a, b = block.models
    if block.base is None:
        return a, b
    return block.cached("tvs", lambda: (a - block.base, b - block.base))


def products(block: Block, stats: Stats) -> Stats:
    """float64 partial sums of a*a, b*b, a*b: over the whole block (flatten), or per column (row-wise)."""
    if block.shared.nuslerp_flatten:
        g = blend.gram(block.stored_base, block.stored_models)  # compiled from the stored rows
        if g is not None:
            return {"aa": g[0, 0], "bb": g[1, 1], "ab": g[0, 1]}
    a, b = _pair(block)
    dot = dot64 if block.shared.nuslerp_flatten or a.dim() < 2 else column_dot64
    return {"aa": dot(a, a), "bb": dot(b, b), "ab": dot(a, b)}


def _cosine(stats: Stats) -> torch.Tensor:
    """cos of the angle from the summed products: () or, per column, the shape of a row; float32."""
    na, nb = stats["aa"].sqrt().clamp(min=NORM_FLOOR), stats["bb"].sqrt().clamp(min=NORM_FLOOR)
    return (stats["ab"] / (na * nb)).clamp(-1, 1).float()


def _row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos per vector along the last axis, (..., 1), computed as mergekit does (float32)."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)

    return torch.sum(unit(a) * unit(b), dim=-1, keepdim=True).clamp(-1, 1)


def factors(t: float, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(where a and b are colinear, sin((1 - t) theta), sin(t theta), sin(theta)), shaped like cos (float32):
    SLERP's factors given cos of the angle theta."""
    colinear = (1 - cos.square()) <= EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos))  # keeps the unused branch finite
    return colinear, torch.sin((1 - t) * theta), torch.sin(t * theta), torch.sin(theta)


def interpolate(t: float, a: torch.Tensor, b: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """SLERP of a and b at t given cos of their angle (broadcast), linear where they are colinear."""
    colinear, c0, c1, s = factors(t, cos)
    return torch.where(colinear, (1 - t) * a + t * b, (c0 * a + c1 * b) / s)


def fraction(block: Block) -> float:
    w1, w2 = (p.weight for p in block.per_model)
    return 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)


def compiled(block: Block, cos: torch.Tensor) -> torch.Tensor | None:
    """The merge of a block with one angle for the whole tensor, from the stored rows: `interpolate`'s
    scalar factors made as it makes them (float32), then one pass; None where the kernels do not run."""
    t = fraction(block)
    colinear, c0, c1, s = factors(t, cos)
    if bool(colinear):  # (1 - t) * a + t * b
        return blend.blend(block.stored_base, *block.stored_models, 1 - t, t)
    return blend.blend(block.stored_base, *block.stored_models, float(c0), float(c1), float(s))


def merge(block: Block, stats: Stats) -> torch.Tensor:
    if block.shared.nuslerp_flatten and (out := compiled(block, _cosine(stats))) is not None:
        return out
    a, b = _pair(block)
    if tensor_wide(block.shared, block.per_model):
        cos = _cosine(stats)
    else:  # per row: each vector lies in the block; a 0-d tensor is a vector of one entry
        cos = _row_cosine(a.reshape(1) if a.dim() == 0 else a, b.reshape(1) if b.dim() == 0 else b).reshape(
            () if a.dim() == 0 else (*a.shape[:-1], 1))
    out = interpolate(fraction(block), a, b, cos)
    return out if block.base is None else block.base + out


def tensor_wide(shared: NuslerpShared, models: tuple) -> bool:
    """Whether the vectors span blocks (the whole tensor, or columns): their products are a statistics pass."""
    return shared.nuslerp_flatten or shared.nuslerp_row_wise


METHOD = Method("nuslerp", merge, "spherical interpolation of two models or task vectors, whole, per row or column",
                "https://github.com/arcee-ai/mergekit", shared=NuslerpShared, per_model=NuslerpWeight,
                base="optional", min_models=2, max_models=2, required=("weight",), work=5,
                stages=(Stage(products, when=tensor_wide),))
