"""Passthrough: copy one model's tensor, optionally scaled; with `slices`, stacks layer ranges of
different models into a deeper one (a frankenmerge)."""

from typing import Annotated

import torch
from pydantic import Field

from surgery.merge.methods.elementwise import Models, PerModel, elementwise

Scale = Annotated[float | None, Field(description="multiply the tensor by this")]


def merge(models: Models, scale: PerModel[Scale] = None) -> torch.Tensor:
    return models[0] if scale[0] is None else models[0] * scale[0]


METHOD = elementwise(merge, "passthrough", "copy one model's tensors (layer slices: frankenmerges)",
                     max_models=1, work=1)
