"""NearSwap: take the other model's value where it is near the base's, keep the base's where the two
are far apart. Each entry moves toward the model by min(1, t / |base - model|): entries closer than
`t` are swapped outright (alchemonaut 2024, https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001).
Entry by entry, so any block of rows suffices."""

import torch
from pydantic import Field

from surgery.merge.methods.method import Block, Method, Params, Stats

FLOOR = 1e-6  # |base - model| is clamped to this: equal entries take the model's value


class NearswapShared(Params):
    t: float | None = Field(None, ge=0, description="distance under which an entry takes the model's value")


def merge(block: Block, stats: Stats) -> torch.Tensor:
    a, b = block.base, block.models[0]
    weight = (block.shared.t / (a - b).abs_().clamp_(min=FLOOR)).clamp_(0, 1)  # (r, ...) in [0, 1]
    return weight * b + (1 - weight) * a


METHOD = Method("nearswap", merge, "take the model's entries near the base's, keep the base's elsewhere",
                "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", shared=NearswapShared,
                max_models=1, required=("t",), work=3)
