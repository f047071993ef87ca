"""The small world's trained base for the slow tests of GRPO, RFT and SPIN: $SURGERY_WORLD_BASE, or
zoo/base (what `surgery zoo zoo` trains), trained there with the zoo recipe (all four tasks) when
missing: tens of minutes on two cores. Not the demo's base (demo/models/base), which knows none of
the skills."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def trained_base() -> str:
    given = os.environ.get("SURGERY_WORLD_BASE")
    if given:
        return os.path.abspath(given)
    folder = REPO / "zoo"
    if not (folder / "base" / "lineage.json").is_file():
        from trainers.world.zoo import build_base

        build_base(str(folder), 2500, quiet=True)
    return str(folder / "base")



def damaged(base: str, folder: str, sigma: float = 0.04, seed: int = 0) -> str:
    """The base with Gaussian noise (std `sigma`) added to every weight: its addition half right
    (greedy exact match about 0.46 on the held-out split, with sigma 0.04), and sampling gives mixed
    groups, right and wrong, which is what a reward can learn from. The trained base itself is right
    on nearly every 2-digit sum and always wrong on 3-digit ones, leaving nothing to learn either way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * sigma)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder
