"""DoRA: the adapted weight is split into a magnitude m (one per output) and a direction; the
direction trains with LoRA and the magnitude directly, W' = m * (W + s B A) / ||W + s B A||
(Liu et al. 2024, arXiv:2402.09353). m starts at ||W|| and B at zero, so training starts from the base.

Realised with PEFT's LoraConfig(use_dora=True); the fields are LoRA's. The result is a PEFT adapter folder.
"""

from __future__ import annotations

import torch

from trainers.methods import lora, peft_adapter
from trainers.methods.method import TrainingMethod


class Config(lora.Config):
    pass


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    return peft_adapter.wrap(model, lora.peft_config(model, config, use_dora=True))


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("dora", Config, attach, save, saves="adapter")
