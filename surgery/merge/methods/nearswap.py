"""NearSwap: take the other model's value where it is near the base's, keep the base's where the two
are far apart. Each entry moves toward the model by min(1, t / |base - model|): entries closer than
`t` are swapped outright (alchemonaut 2024, https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001).
Entry by entry, so any block of rows suffices."""

from typing import Annotated

import torch
from pydantic import Field

from surgery.merge.methods.elementwise import Models, elementwise

FLOOR = 1e-6  # |base - model| is clamped to this: equal entries take the model's value


def merge(base: torch.Tensor, models: Models,
          t: Annotated[float, Field(ge=0, description="distance under which an entry takes the model's value")]
          ) -> torch.Tensor:
    b = models[0]
    weight = (t / (base - b).abs_().clamp_(min=FLOOR)).clamp_(0, 1)  # (r, ...) in [0, 1]
    return weight * b + (1 - weight) * base


METHOD = elementwise(merge, "nearswap", "take the model's entries near the base's, keep the base's elsewhere",
                     "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", max_models=1, work=3)
