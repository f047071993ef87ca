"""LoRA+: LoRA whose B matrices learn `ratio` times faster than the A matrices, which the paper
shows is needed for efficient feature learning at large width (Hayou et al. 2024, arXiv:2402.12354;
it suggests a ratio of about 2^4).

The adapter is plain LoRA (a PEFT adapter folder); only the optimizer's parameter groups differ.
"""

from __future__ import annotations

import torch
from pydantic import Field

from trainers.methods import lora, peft_adapter
from trainers.methods.method import TrainingMethod


class Config(lora.Config):
    ratio: float = Field(16, ge=1, le=1024, description="learning rate of the B matrices over that of the A matrices")


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    return peft_adapter.wrap(model, lora.peft_config(model, config))


def param_groups(model: torch.nn.Module, config: Config, lr: float) -> list[dict]:
    """Two AdamW groups: the B matrices at ratio * lr, everything else trainable (the A matrices) at lr."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fast = [p for n, p in trainable if is_b(n)]
    rest = [p for n, p in trainable if not is_b(n)]
    return [g for g in ({"params": rest, "lr": lr}, {"params": fast, "lr": lr * config.ratio}) if g["params"]]


def is_b(name: str) -> bool:
    """`...q_proj.lora_B.default.weight` (and an embedding's `lora_embedding_B`)."""
    return ".lora_B." in name or ".lora_embedding_B." in name


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("lora_plus", Config, attach, save, saves="adapter", param_groups=param_groups)
