"""Passthrough: copy one model's tensor, optionally scaled; with `slices`, stacks layer ranges of
different models into a deeper one (a frankenmerge)."""

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stats


class Scale(Params):
    scale: float | None = Field(None, description="multiply the tensor by this")


def merge(block: Block, stats: Stats) -> torch.Tensor:
    scale = block.per_model[0].scale
    return block.models[0] if scale is None else block.models[0] * scale


METHOD = Method("passthrough", merge, "copy one model's tensors (layer slices: frankenmerges)",
                per_model=Scale, base="unused", max_models=1, work=1)
